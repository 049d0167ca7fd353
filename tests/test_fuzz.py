"""Property-based tests: whatever a recipe file or an image file holds, loading it gives a valid result or
one of the tool's input errors (exit 2), never another exception (exit 3).

- the recipe loader on random YAML documents, random mutations of a valid recipe, YAML-ish token soup
  and random bytes: a LoadedRecipe, or a RecipeError/InputError;
- the image reader on random bytes, truncated real images, and random small images of every PIL mode
  and several file formats, under random resize settings: a float32 tensor of the declared shape, or a
  DataError.
"""

from __future__ import annotations

import atexit
import copy
import io
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from quant.data.sources import open_source
from quant.errors import DataError, InputError
from quant.recipe.loader import LoadedRecipe, load_recipe
from quant.recipe.schema import DataSet, ImageInput, ResizeFixed, ResizeLimitSide, ResizeToHeight
from tests.conftest import base_recipe

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
WORK = Path(tempfile.mkdtemp(prefix="quant-fuzz-"))  # hypothesis examples cannot use function-scoped tmp_path
atexit.register(shutil.rmtree, WORK, True)


# --------------------------------------------------------------------------- recipe loader


def _load(text: str | bytes) -> LoadedRecipe | InputError:
    path = WORK / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        return load_recipe(str(path))
    except InputError as error:  # RecipeError and friends: exit 2 with one line
        assert str(error).strip() and "\n" not in str(error).strip(), repr(str(error))
        return error


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["fp16", "static_int8", "1/255", "1/0", "${env:HOME}", "${env:NOPE_X}", "../x", "NCHW", "cosine", "a\x00b", "/", "~", "..x.y"]),
)
keys = st.one_of(
    st.sampled_from(["name", "model", "path", "inputs", "x", "resize", "mode", "height", "width", "variants", "method", "gates",
                     "metric", "min", "max", "evaluation", "calibration", "source", "images", "npz", "samples", "bench", "promotion",
                     "extends", "preset", "outputs", "kind", "scale", "mean", "std"]),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)), max_leaves=25
)


@FUZZ
@given(documents)
def test_random_yaml_documents_load_or_fail_cleanly(document: Any) -> None:
    _load(yaml.safe_dump(document, allow_unicode=True))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _valid_recipe() -> dict[str, Any]:
    folder = WORK / "data"
    if not folder.exists():
        import onnx

        from tests.conftest import tiny_ctc_model, write_images

        folder.mkdir()
        onnx.save(tiny_ctc_model(), str(folder / "tiny.onnx"))
        write_images(folder / "calib", 2, seed=1, prefix="c")
        write_images(folder / "eval", 2, seed=2, prefix="e")
    return base_recipe(folder / "tiny.onnx", folder / "calib", folder / "eval", variants={"fp16": {"method": "fp16"}, "q": {"method": "static_int8"}})


@FUZZ
@given(st.data())
def test_mutated_valid_recipes_load_or_fail_cleanly(data: st.DataObject) -> None:
    recipe = _valid_recipe()
    assert isinstance(_load(yaml.safe_dump(recipe)), LoadedRecipe)  # the seed is valid
    mutated = copy.deepcopy(recipe)
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(_paths(mutated)[1:]))
        *parents, last = path
        holder = mutated
        for step in parents:
            holder = holder[step]
        action = data.draw(st.sampled_from(["delete", "replace", "add", "wrap"]))
        if action == "delete":
            del holder[last]
        elif action == "replace":
            holder[last] = data.draw(documents)
        elif action == "wrap":
            holder[last] = [holder[last]]
        elif isinstance(holder[last], dict):
            holder[last][data.draw(keys)] = data.draw(documents)
        else:
            holder[last] = {data.draw(keys): holder[last]}
    _load(yaml.safe_dump(mutated, allow_unicode=True))


yaml_tokens = st.sampled_from(
    ["name", "variants", "fp16", "method", "model", "path", ":", ": ", "- ", "{", "}", "[", "]", ",", "\n", "\n  ", "\n    ", "&a ", "*a",
     "<<: ", "!!python/object:os.system ", "!!binary ", "!!str ", "!!map ", "? ", "'", '"', "|\n  ", ">", "#", "%YAML 1.1\n", "---\n", "...\n",
     "\t", "~", "null", "1e400", "0x1F", "&b [*b]", "${env:HOME}", "extends: ", "recipe.yaml", "\x00", "\ufeff"]
)


@FUZZ
@given(st.lists(yaml_tokens, max_size=40).map("".join))
def test_yaml_token_soup_loads_or_fails_cleanly(text: str) -> None:
    _load(text)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_a_recipe_fail_cleanly(data: bytes) -> None:
    _load(data)


# --------------------------------------------------------------------------- image reader


resize_specs = st.one_of(
    st.builds(lambda h, w, keep, pad: {"mode": "fixed", "height": h, "width": w, "keep_ratio": keep, "pad": pad},
              st.integers(1, 40), st.integers(1, 40), st.booleans(), st.sampled_from(["right", "center"])),
    st.builds(lambda h, lo, hi, m: {"mode": "height", "height": h, "min_width": min(lo, hi), "max_width": max(lo, hi), "multiple_of": m},
              st.integers(1, 40), st.integers(1, 60), st.integers(1, 60), st.integers(1, 8)),
    st.builds(lambda limit, kind, m: {"mode": "limit_side", "limit": limit, "limit_type": kind, "multiple_of": m},
              st.integers(1, 64), st.sampled_from(["max", "min"]), st.sampled_from([1, 4, 8, 32])),
)
image_inputs = st.builds(
    lambda resize, layout, color: ImageInput.model_validate(
        {"resize": resize, "layout": layout, "color": color, "mean": [0.5] * 3, "std": [0.25] * 3}
    ),
    resize_specs,
    st.sampled_from(["NCHW", "NHWC"]),
    st.sampled_from(["RGB", "BGR"]),
)


def _read(data: bytes, suffix: str, spec: ImageInput) -> np.ndarray | None:
    """The tensor for one image file through the real image-folder source; None for a DataError."""
    folder = Path(tempfile.mkdtemp(dir=WORK))
    (folder / f"sample{suffix}").write_bytes(data)
    try:
        source = open_source(DataSet.model_validate({"source": {"images": str(folder)}}), folder, {"x": spec}, ["x"], "evaluation")
        (_, feeds), = list(source)
        return feeds["x"]
    except DataError as error:
        assert error.file and "sample" in error.file and error.field == "evaluation.source.images", str(error)
        return None


def _check_shape(tensor: np.ndarray, spec: ImageInput) -> None:
    assert tensor.dtype == np.float32 and tensor.ndim == 4 and tensor.shape[0] == 1
    height, width, channels = (tensor.shape[2], tensor.shape[3], tensor.shape[1]) if spec.layout == "NCHW" else tensor.shape[1:4]
    assert channels == 3
    resize = spec.resize
    if isinstance(resize, ResizeFixed):
        assert (height, width) == (resize.height, resize.width)
    elif isinstance(resize, ResizeToHeight):
        assert height == resize.height and width >= resize.min_width and width % resize.multiple_of == 0
        assert width <= math.ceil(max(resize.min_width, resize.max_width) / resize.multiple_of) * resize.multiple_of
    else:
        assert isinstance(resize, ResizeLimitSide)
        assert height % resize.multiple_of == 0 and width % resize.multiple_of == 0 and height > 0 and width > 0
    assert np.isfinite(tensor).all()


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".png", ".jpg", ".bmp", ".webp", ".tif"]), image_inputs)
def test_random_bytes_as_an_image_give_a_data_error_or_a_tensor(data: bytes, suffix: str, spec: ImageInput) -> None:
    tensor = _read(data, suffix, spec)
    if tensor is not None:
        _check_shape(tensor, spec)


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La", "I;16", "I;16B"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".png"}


@FUZZ
@given(
    st.sampled_from(MODES),
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from(list(FORMATS)),
    image_inputs,
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_random_small_images_give_a_tensor_of_the_declared_shape(
    mode: str, width: int, height: int, fmt: str, spec: ImageInput, seed: int, truncate: bool
) -> None:
    rng = np.random.default_rng(seed)
    image = Image.frombytes("RGB", (width, height), rng.integers(0, 256, (height, width, 3), np.uint8).tobytes())
    try:
        image = image.convert(mode)
    except ValueError:
        image = Image.new(mode, (width, height))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # this format cannot hold this mode: nothing to read
    data = buffer.getvalue()
    if truncate:
        data = data[: max(1, len(data) * 2 // 3)]
    tensor = _read(data, FORMATS[fmt], spec)
    if tensor is None:
        assert truncate or mode in ("La",), f"a valid {mode} {fmt} image of {width}x{height} was refused"
        return
    _check_shape(tensor, spec)

