"""Transforms third-party models need: short side then centre crop, one-channel (grey) input, and a
shape mismatch that is a layout or channel mistake says which setting fixes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from pydantic import ValidationError

from quant.data.transforms import image_to_tensor
from quant.recipe.schema import ImageInput
from tests.conftest import HEIGHT, base_recipe, run_cli, write_recipe


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_short_side_then_centre_crop() -> None:
    image = _image(40, 20)
    spec = ImageInput.model_validate({"resize": {"size": 16, "crop": 12}, "scale": 1, "layout": "NHWC"})
    expected = np.asarray(image.resize((32, 16), Image.Resampling.BILINEAR).crop((10, 2, 22, 14)), dtype=np.float32)
    assert np.array_equal(image_to_tensor(image, spec)[0], expected)
    tall = image_to_tensor(_image(20, 50), spec.model_copy(update={"layout": "NCHW"}))
    assert tall.shape == (1, 3, 12, 12)
    with pytest.raises(ValidationError, match="larger than the resized short side"):
        ImageInput.model_validate({"resize": {"size": 16, "crop": 20}})


def test_gray_input_is_one_channel_of_luma() -> None:
    image = _image(30, 10)
    spec = ImageInput.model_validate({"resize": {"height": 10, "min_width": 30}, "color": "GRAY", "mean": 0.5, "std": 0.25})
    tensor = image_to_tensor(image, spec)
    luma = np.asarray(image.convert("L"), dtype=np.float32) / 255
    assert tensor.shape == (1, 1, 10, 30) and np.allclose(tensor[0, 0], (luma - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(ValidationError, match="GRAY has one channel"):
        ImageInput.model_validate({"resize": {"height": 10}, "color": "GRAY", "mean": [0.5, 0.4, 0.5]})


def _grey_conv_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "grey",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, HEIGHT, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, HEIGHT, "W"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _validate(workspace: dict[str, Path], x: dict) -> tuple[int, str]:
    recipe = base_recipe(workspace["model"], workspace["calib"], workspace["eval"], outputs={})
    recipe["inputs"]["x"].update(x)
    done = run_cli("--recipe", str(write_recipe(workspace["root"], recipe)), "--validate", cwd=workspace["root"])
    return done.returncode, done.stderr


def test_a_grey_model_is_fed_and_a_colour_feed_says_set_gray(workspace: dict[str, Path]) -> None:
    onnx.save(_grey_conv_model(), str(workspace["model"]))
    code, err = _validate(workspace, {"color": "GRAY", "mean": 0.5, "std": 0.5})
    assert code == 0, err
    code, err = _validate(workspace, {})
    assert code == 2 and "set color: GRAY" in err and "inputs.x" in err


def test_a_layout_mistake_says_which_layout(workspace: dict[str, Path]) -> None:
    code, err = _validate(workspace, {"layout": "NHWC"})
    assert code == 2 and "expects [1, 3, 8, 'W']" in err and "set layout: NCHW" in err
