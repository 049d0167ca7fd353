"""The bad-input matrix: every bad recipe, model, data set or output folder exits 2 with exactly one line
on stderr naming the file and the field, no traceback, and nothing in the release folder.

Each case is a small function that breaks a fresh copy of the tiny workspace and says what the one
error line must contain. Most cases run `quantize --validate` (they must fail before anything is
built); the output-folder cases (not writable, read-only, disk full) need a real run of the tiny
model. All cases run as real `quantize` subprocesses, a few at a time, in one module fixture.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml

from tests.conftest import REPO, base_recipe, tiny_ctc_model, write_images

# --------------------------------------------------------------------------- the harness


@dataclass
class Ctx:
    """One case's workspace: a tiny model, image folders, a recipe (dict, or raw text) and extra CLI args."""

    root: Path
    model: Path
    calib: Path
    eval: Path
    recipe: dict[str, Any] | str
    args: list[str] = field(default_factory=list)
    validate: bool = True  # --validate: must fail before anything is built
    mounts: list[Path] = field(default_factory=list)
    preexec: Callable[[], None] | None = None
    extra_release_roots: list[Path] = field(default_factory=list)  # release roots outside root to check
    keep_releases: set[str] = field(default_factory=set)  # pre-existing release files that must stay unchanged

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    group: str  # recipe | model | data | environment
    setup: Callable[[Ctx], Any]  # breaks the workspace; returns the file the error line must name
    field: str | None  # the field the line must name (`field '<field>'`), None when the whole file is bad
    words: str  # a phrase the line must contain (case-insensitive regex)


def _new_ctx(root: Path) -> Ctx:
    root.mkdir(parents=True, exist_ok=True)
    model = root / "tiny.onnx"
    onnx.save(tiny_ctc_model(), str(model))
    calib, evaluation = root / "calib", root / "eval"
    write_images(calib, 6, seed=1, prefix="c")
    write_images(evaluation, 4, seed=2, prefix="e")
    return Ctx(root, model, calib, evaluation, base_recipe(model, calib, evaluation))


def _dump(recipe: dict[str, Any]) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)


class Unavailable(Exception):
    """This machine cannot set up a case's condition (e.g. no right to mount a tmpfs)."""


def _mount_tmpfs(ctx: Ctx, name: str, options: str) -> Path:
    """A small tmpfs (CI runs as root, see .ci/run); Unavailable when mounting is not possible here."""
    point = ctx.root / name
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs ({options}) here: {done.stderr.strip() or done.returncode}; CI runs as root to do it")
    ctx.mounts.append(point)
    return point


def _fill(folder: Path) -> None:
    """Fill a filesystem to the last byte (unbuffered, so no failing flush on close)."""
    with (folder / "filler").open("wb", buffering=0) as handle:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _one_real_variant(ctx: Ctx) -> None:
    assert isinstance(ctx.recipe, dict)
    ctx.validate = False
    ctx.recipe["variants"] = {"fp16": {"method": "fp16"}}


# --------------------------------------------------------------------------- recipe cases


def r_syntax(ctx: Ctx) -> Path:
    ctx.recipe = _dump(ctx.recipe) + "gates: [{metric: cosine, min: 0.9}\n"
    return ctx.recipe_path


def r_tab_indent(ctx: Ctx) -> Path:
    ctx.recipe = _dump(ctx.recipe).replace("  fp16:", "\tfp16:")
    return ctx.recipe_path


def r_unknown_top_key(ctx: Ctx) -> Path:
    ctx.recipe["colour"] = "red"  # type: ignore[index]
    return ctx.recipe_path


def r_unknown_nested_key(ctx: Ctx) -> Path:
    ctx.recipe["variants"]["fp16"]["keep_io_typ"] = True  # type: ignore[index]
    return ctx.recipe_path


def r_wrong_type_scalar(ctx: Ctx) -> Path:
    ctx.recipe["bench"]["rounds"] = "many"  # type: ignore[index]
    return ctx.recipe_path


def r_wrong_type_list(ctx: Ctx) -> Path:
    ctx.recipe["variants"] = [{"method": "fp16"}]  # type: ignore[index]
    return ctx.recipe_path


def r_wrong_type_mean(ctx: Ctx) -> Path:
    ctx.recipe["inputs"]["x"]["mean"] = [0.5, 0.5]  # type: ignore[index]
    return ctx.recipe_path


def r_unknown_method(ctx: Ctx) -> Path:
    ctx.recipe["variants"]["fp16"]["method"] = "int4"  # type: ignore[index]
    return ctx.recipe_path


def r_missing_method(ctx: Ctx) -> Path:
    del ctx.recipe["variants"]["fp16"]["method"]  # type: ignore[index]
    return ctx.recipe_path


def r_missing_evaluation(ctx: Ctx) -> Path:
    del ctx.recipe["evaluation"]  # type: ignore[union-attr]
    return ctx.recipe_path


def r_missing_model_path(ctx: Ctx) -> Path:
    ctx.recipe["model"] = {"package": "rapidocr_onnxruntime"}  # type: ignore[index]
    return ctx.recipe_path


def r_duplicate_variant(ctx: Ctx) -> Path:
    recipe = dict(ctx.recipe)  # type: ignore[arg-type]
    del recipe["variants"]
    ctx.recipe = _dump(recipe) + "variants:\n  fp16: {method: fp16}\n  fp16: {method: dynamic_int8}\n"
    return ctx.recipe_path


def r_duplicate_top_key(ctx: Ctx) -> Path:
    ctx.recipe = _dump(ctx.recipe) + "name: other-name\n"
    return ctx.recipe_path


def r_gate_min_above_max(ctx: Ctx) -> Path:
    ctx.recipe["gates"] = [{"metric": "cosine", "min": 0.99, "max": 0.5}]  # type: ignore[index]
    return ctx.recipe_path


def r_gate_without_bound(ctx: Ctx) -> Path:
    ctx.recipe["gates"] = [{"metric": "cosine"}]  # type: ignore[index]
    return ctx.recipe_path


def r_min_width_above_max(ctx: Ctx) -> Path:
    ctx.recipe["inputs"]["x"]["resize"] = {"mode": "height", "height": 8, "min_width": 64, "max_width": 32}  # type: ignore[index]
    return ctx.recipe_path


def r_static_without_calibration(ctx: Ctx) -> Path:
    del ctx.recipe["calibration"]  # type: ignore[union-attr]
    ctx.recipe["variants"] = {"int8": {"method": "static_int8"}}  # type: ignore[index]
    return ctx.recipe_path


def r_zero_std(ctx: Ctx) -> Path:
    ctx.recipe["inputs"]["x"]["std"] = [0.5, 0, 0.5]  # type: ignore[index]
    return ctx.recipe_path


def r_scale_div_zero(ctx: Ctx) -> Path:
    ctx.recipe["inputs"]["x"]["scale"] = "1/0"  # type: ignore[index]
    return ctx.recipe_path


def r_unknown_metric(ctx: Ctx) -> Path:
    ctx.recipe["gates"] = [{"metric": "accuracy", "min": 0.9}]  # type: ignore[index]
    return ctx.recipe_path


def r_inapplicable_metric(ctx: Ctx) -> Path:
    ctx.recipe["gates"] = [{"metric": "map_iou", "min": 0.9}]  # type: ignore[index]
    return ctx.recipe_path


def r_gate_unknown_output(ctx: Ctx) -> Path:
    ctx.recipe["variants"]["fp16"]["gates"] = [{"metric": "cosine", "min": 0.9, "output": "nope"}]  # type: ignore[index]
    return ctx.recipe_path


def r_extends_loop(ctx: Ctx) -> Path:
    (ctx.root / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (ctx.root / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    ctx.recipe = "extends: a.yaml\n"
    return ctx.recipe_path


def r_extends_self(ctx: Ctx) -> Path:
    ctx.recipe = "extends: recipe.yaml\n" + _dump(ctx.recipe)  # type: ignore[arg-type]
    return ctx.recipe_path


def r_extends_missing(ctx: Ctx) -> Path:
    ctx.recipe = "extends: nowhere.yaml\n" + _dump(ctx.recipe)  # type: ignore[arg-type]
    return ctx.recipe_path


def r_extends_outside(ctx: Ctx) -> Path:
    outside = ctx.root.parent / f"{ctx.root.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "base.yaml").write_text(_dump(ctx.recipe))  # type: ignore[arg-type]
    ctx.recipe = f"extends: ../{outside.name}/base.yaml\n"
    return ctx.recipe_path


def r_empty(ctx: Ctx) -> Path:
    ctx.recipe = "# nothing here\n"
    return ctx.recipe_path


def r_not_mapping(ctx: Ctx) -> Path:
    ctx.recipe = "- name: tiny\n- model: x\n"
    return ctx.recipe_path


def r_not_utf8(ctx: Ctx) -> Path:
    ctx.recipe = "name: tiny\n"
    ctx.args = ["--recipe", str(ctx.root / "latin1.yaml")]
    (ctx.root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    return ctx.root / "latin1.yaml"


def r_recipe_missing(ctx: Ctx) -> str:
    ctx.args = ["--recipe", str(ctx.root / "no-such-recipe.yaml")]
    return str(ctx.root / "no-such-recipe.yaml")


def r_env_unset(ctx: Ctx) -> Path:
    ctx.recipe["evaluation"]["source"]["images"] = "${env:QUANT_TEST_SURELY_UNSET}"  # type: ignore[index]
    return ctx.recipe_path


def r_unknown_preset(ctx: Ctx) -> Path:
    ctx.recipe["preset"] = "pentium3"  # type: ignore[index]
    return ctx.recipe_path


def r_name_with_slash(ctx: Ctx) -> Path:
    ctx.recipe["name"] = "../../etc/evil"  # type: ignore[index]
    return ctx.recipe_path


def r_variant_path_name(ctx: Ctx) -> Path:
    ctx.recipe["variants"] = {"../../etc/x": {"method": "fp16"}}  # type: ignore[index]
    return ctx.recipe_path


def r_no_variants(ctx: Ctx) -> Path:
    ctx.recipe["variants"] = {}  # type: ignore[index]
    return ctx.recipe_path


def r_python_tag(ctx: Ctx) -> Path:
    marker = ctx.root / "pwned"
    ctx.recipe = _dump(ctx.recipe).replace("name: tiny", f"name: !!python/object/apply:os.system ['touch {marker}']")
    return ctx.recipe_path


def r_alias_bomb(ctx: Ctx) -> Path:
    # "billion laughs": 9 levels of 10 aliases each; safe_load builds it cheaply, expanding it would not end.
    bomb = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for level in range(1, 10):
        bomb += f"lol{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]\n"
    ctx.recipe = bomb + _dump(ctx.recipe)  # type: ignore[arg-type]
    return ctx.recipe_path


def r_recursive_alias(ctx: Ctx) -> Path:
    recipe = dict(ctx.recipe)  # type: ignore[arg-type]
    del recipe["gates"]
    ctx.recipe = _dump(recipe) + "gates: &g\n  - *g\n"
    return ctx.recipe_path


def r_deep_nesting(ctx: Ctx) -> Path:
    ctx.recipe = "name: " + "[" * 20000 + "]" * 20000 + "\n"
    return ctx.recipe_path


def r_nul_in_path(ctx: Ctx) -> Path:
    ctx.recipe["promotion"]["to"] = "releases\x00/../../etc"  # type: ignore[index]
    return ctx.recipe_path


def r_only_unknown(ctx: Ctx) -> Path:
    ctx.args = ["--only", "nope"]
    return ctx.recipe_path


def r_bad_release_version(ctx: Ctx) -> Path:
    ctx.args = ["--release-version", "version-one"]
    return ctx.recipe_path


def r_existing_release_version(ctx: Ctx) -> Path:
    existing = ctx.root / "releases" / "tiny" / "v1"
    existing.mkdir(parents=True)
    (existing / "manifest.json").write_text("{}\n")
    ctx.keep_releases = {"tiny/v1/manifest.json"}
    ctx.args = ["--release-version", "v1"]
    return existing


# --------------------------------------------------------------------------- model cases


def m_missing(ctx: Ctx) -> Path:
    ctx.model.unlink()
    return ctx.model


def m_directory(ctx: Ctx) -> Path:
    ctx.model.unlink()
    ctx.model.mkdir()
    return ctx.model


def m_empty(ctx: Ctx) -> Path:
    ctx.model.write_bytes(b"")
    return ctx.model


def m_truncated(ctx: Ctx) -> Path:
    data = ctx.model.read_bytes()
    ctx.model.write_bytes(data[: len(data) // 2])
    return ctx.model


def m_not_onnx(ctx: Ctx) -> Path:
    ctx.model.write_text("<html>this is a web page, not a model</html>\n")
    return ctx.model


def m_checker(ctx: Ctx) -> Path:
    model = tiny_ctc_model()
    model.graph.node[1].op_type = "NoSuchOp"
    onnx.save(model, str(ctx.model))
    return ctx.model


def m_opset_too_old(ctx: Ctx) -> Path:
    onnx.save(tiny_ctc_model(opset=6), str(ctx.model))
    return ctx.model


def m_input_names(ctx: Ctx) -> Path:
    ctx.recipe["inputs"]["y"] = ctx.recipe["inputs"].pop("x")  # type: ignore[index]
    return ctx.recipe_path


def m_input_without_entry(ctx: Ctx) -> Path:
    model = tiny_ctc_model()
    model.graph.input.append(onnx.helper.make_tensor_value_info("unused", onnx.TensorProto.FLOAT, [1]))  # the recipe says nothing of it
    onnx.save(model, str(ctx.model))
    return ctx.recipe_path


def m_output_names(ctx: Ctx) -> Path:
    ctx.recipe["outputs"] = {"logits": {"kind": "ctc"}}  # type: ignore[index]
    return ctx.recipe_path


def m_metadata_key(ctx: Ctx) -> Path:
    ctx.recipe["outputs"]["probs"]["charset_metadata"] = "no_such_key"  # type: ignore[index]
    return ctx.recipe_path


def _external(ctx: Ctx) -> Path:
    folder = ctx.root / "ext"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(tiny_ctc_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    ctx.recipe["model"]["path"] = str(path)  # type: ignore[index]
    return path


def _set_location(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))


def m_external_missing(ctx: Ctx) -> Path:
    path = _external(ctx)
    (path.parent / "m.data").unlink()
    return path


def m_external_dotdot(ctx: Ctx) -> Path:
    path = _external(ctx)
    shutil.copyfile(path.parent / "m.data", ctx.root / "secret.data")
    _set_location(path, "../secret.data")
    return path


def m_external_absolute(ctx: Ctx) -> Path:
    path = _external(ctx)
    shutil.copyfile(path.parent / "m.data", ctx.root / "secret.data")
    _set_location(path, str(ctx.root / "secret.data"))
    return path


def m_external_symlink(ctx: Ctx) -> Path:
    path = _external(ctx)
    (path.parent / "m.data").rename(ctx.root / "elsewhere.data")
    (path.parent / "m.data").symlink_to(ctx.root / "elsewhere.data")
    return path


def _varint(value: int) -> bytes:
    out = b""
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def m_huge_length(ctx: Ctx) -> Path:
    # ModelProto.graph (field 7) claiming 2 GB of bytes that are not there.
    ctx.model.write_bytes(b"\x08\x08" + b"\x3a" + _varint(2**31 + 5) + b"\x0a\x01x" * 4)
    return ctx.model


def m_deep_nesting(ctx: Ctx) -> Path:
    # graph -> node -> attribute -> graph -> ... 200 levels: a parser stack bomb.
    def graph(depth: int) -> bytes:
        if depth == 0:
            return _field(2, b"g")
        return _field(1, _field(5, _field(1, b"a") + b"\x20\x05" + _field(6, graph(depth - 1))))

    ctx.model.write_bytes(b"\x08\x08" + _field(7, graph(200)))
    return ctx.model


def m_over_2gb_single_file(ctx: Ctx) -> Path:
    # A sparse 2.2 GB file: a protobuf cannot be that large, so it must be refused without reading it.
    with ctx.model.open("r+b") as handle:
        handle.truncate(2_200_000_000)
    return ctx.model


def m_ort_cannot_load(ctx: Ctx) -> Path:
    # Passes onnx.checker (ops of an unknown domain are not checked), but onnxruntime has no kernel for it.
    model = tiny_ctc_model()
    model.graph.node[1].op_type, model.graph.node[1].domain = "FancyRelu", "com.example.quant"
    model.opset_import.append(onnx.helper.make_opsetid("com.example.quant", 1))
    onnx.save(model, str(ctx.model))
    ctx.validate = False  # only a real run opens an onnxruntime session
    return ctx.model


def m_package_bad_name(ctx: Ctx) -> Path:
    ctx.recipe["model"] = {"package": "..relative.name", "path": "m.onnx"}  # type: ignore[index]
    return ctx.recipe_path


def m_package_missing(ctx: Ctx) -> Path:
    ctx.recipe["model"] = {"package": "no_such_package_for_quant_tests", "path": "m.onnx"}  # type: ignore[index]
    return ctx.recipe_path


# --------------------------------------------------------------------------- data cases


def d_empty_folder(ctx: Ctx) -> Path:
    folder = ctx.root / "empty"
    folder.mkdir()
    (folder / "README.txt").write_text("a non-image file is not a sample")
    ctx.recipe["evaluation"]["source"]["images"] = str(folder)  # type: ignore[index]
    return folder


def d_missing_folder(ctx: Ctx) -> Path:
    ctx.recipe["calibration"]["source"]["images"] = str(ctx.root / "nowhere")  # type: ignore[index]
    return ctx.root / "nowhere"


def d_corrupt_image(ctx: Ctx) -> Path:
    bad = ctx.eval / "e_001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return bad


def d_text_named_jpg(ctx: Ctx) -> Path:
    bad = ctx.calib / "notes.jpg"
    bad.write_text("just some text that pretends to be a JPEG\n")
    return bad


def d_zero_byte_image(ctx: Ctx) -> Path:
    bad = ctx.eval / "e_000.png"
    bad.write_bytes(b"")
    return bad


def d_wrong_shape(ctx: Ctx) -> Path:
    ctx.recipe["inputs"]["x"]["resize"] = {"mode": "height", "height": 10, "min_width": 16}  # type: ignore[index]
    return ctx.calib


def d_wrong_layout(ctx: Ctx) -> Path:
    ctx.recipe["inputs"]["x"]["layout"] = "NHWC"  # type: ignore[index]
    return ctx.calib


def _npz_recipe(ctx: Ctx, path: Path) -> None:
    assert isinstance(ctx.recipe, dict)
    ctx.recipe.pop("calibration")
    ctx.recipe["inputs"] = {}
    ctx.recipe["evaluation"] = {"source": {"npz": str(path)}}


def d_npz_missing_input(ctx: Ctx) -> Path:
    path = ctx.root / "eval.npz"
    np.savez(path, y=np.zeros((2, 3, 8, 16), np.float32))
    _npz_recipe(ctx, path)
    return path


def d_npz_not_zip(ctx: Ctx) -> Path:
    path = ctx.root / "eval.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    _npz_recipe(ctx, path)
    return path


def d_npz_pickle(ctx: Ctx) -> Path:
    path = ctx.root / "eval.npz"
    np.savez(path, x=np.array([{"code": "would run on load"}], dtype=object))
    _npz_recipe(ctx, path)
    return path


def d_npz_wrong_shape(ctx: Ctx) -> Path:
    path = ctx.root / "eval.npz"
    np.savez(path, x=np.zeros((2, 5), np.float32))
    _npz_recipe(ctx, path)
    return path


def d_npz_no_rows(ctx: Ctx) -> Path:
    path = ctx.root / "eval.npz"
    np.savez(path, x=np.zeros((0, 3, 8, 16), np.float32))
    _npz_recipe(ctx, path)
    return path


def d_npz_truncated(ctx: Ctx) -> Path:
    path = ctx.root / "eval.npz"
    np.savez(path, x=np.ones((4, 3, 8, 16), np.float32))
    path.write_bytes(path.read_bytes()[:300])
    _npz_recipe(ctx, path)
    return path


def d_npz_bad_member(ctx: Ctx) -> Path:
    path = ctx.root / "eval.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY garbage header")
    _npz_recipe(ctx, path)
    return path


def d_overlap_same_folder(ctx: Ctx) -> Path:
    ctx.recipe["evaluation"]["source"]["images"] = str(ctx.calib)  # type: ignore[index]
    return ctx.calib


def r_search_without_tuning(ctx: Ctx) -> Path:
    # A fallback search with no tuning set would choose on the samples the gates judge on.
    ctx.recipe["variants"] = {"int8": {"method": "static_int8", "fallback": {"max_nodes": 2}}}  # type: ignore[index]
    return ctx.recipe_path


def d_overlap_renamed_copy(ctx: Ctx) -> Path:
    shutil.copyfile(ctx.calib / "c_002.png", ctx.eval / "zz_copy.png")
    return ctx.eval


def d_fp32_cannot_run(ctx: Ctx) -> Path:
    # Declares x[1,3,8,W] but flattens it into a 384-row MatMul: only 16-pixel-wide lines fit.
    weights = onnx.numpy_helper.from_array(np.ones((384, 6), np.float32), "w")
    shape = onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Reshape", ["x", "shape"], ["flat"]), onnx.helper.make_node("MatMul", ["flat", "w"], ["probs"])],
        "fixed_width",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, "W"])],
        [onnx.helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, [1, 6])],
        [weights, shape],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(ctx.model))
    ctx.recipe["outputs"] = {}  # type: ignore[index]
    write_images(ctx.eval, 4, seed=2, prefix="e", size=(40, 8))  # 40 wide after resizing to height 8
    _one_real_variant(ctx)
    return ctx.eval


def d_labels_missing(ctx: Ctx) -> Path:
    ctx.recipe["evaluation"]["source"]["labels"] = "labels.tsv"  # type: ignore[index]
    return ctx.eval / "labels.tsv"


def d_labels_malformed(ctx: Ctx) -> Path:
    (ctx.eval / "labels.tsv").write_text("e_000.png\tabc\ne_001.png has no tab\n")
    ctx.recipe["evaluation"]["source"]["labels"] = "labels.tsv"  # type: ignore[index]
    return ctx.eval / "labels.tsv"


# --------------------------------------------------------------------------- environment cases (real runs)


def _blocking_file(ctx: Ctx) -> Path:
    """A real run whose target folder would have to live under a regular file."""
    _one_real_variant(ctx)
    blocker = ctx.root / "a_file"
    blocker.write_text("not a folder")
    return blocker


def e_out_under_file(ctx: Ctx) -> Path:
    blocker = _blocking_file(ctx)
    ctx.args = ["--out", str(blocker / "run")]
    return blocker


def e_cache_under_file(ctx: Ctx) -> Path:
    blocker = _blocking_file(ctx)
    ctx.args = ["--cache", str(blocker / "cache")]
    return blocker


def e_release_under_file(ctx: Ctx) -> Path:
    blocker = _blocking_file(ctx)
    ctx.recipe["promotion"]["to"] = str(blocker / "releases")  # type: ignore[index]
    return blocker


def e_json_under_file(ctx: Ctx) -> Path:
    blocker = _blocking_file(ctx)
    ctx.args = ["--json", str(blocker / "out.json")]
    return blocker


def e_out_read_only(ctx: Ctx) -> Path:
    _one_real_variant(ctx)
    mount = _mount_tmpfs(ctx, "ro", "ro,size=1m")
    ctx.args = ["--out", str(mount / "run")]
    return mount


def e_release_read_only(ctx: Ctx) -> Path:
    _one_real_variant(ctx)
    mount = _mount_tmpfs(ctx, "ro", "ro,size=1m")
    ctx.recipe["promotion"]["to"] = str(mount / "releases")  # type: ignore[index]
    ctx.extra_release_roots.append(mount)
    return mount


def e_out_disk_full(ctx: Ctx) -> Path:
    _one_real_variant(ctx)
    mount = _mount_tmpfs(ctx, "full", "size=256k")
    _fill(mount)
    ctx.args = ["--out", str(mount / "run")]
    return mount / "run"


def e_out_file_size_limit(ctx: Ctx) -> Path:
    """Every file the run writes may have 200 bytes at most (RLIMIT_FSIZE): writes fail with EFBIG."""
    _one_real_variant(ctx)
    ctx.preexec = _limit_file_size(200)
    return ctx.root / "run"


def e_release_disk_full(ctx: Ctx) -> Path:
    _one_real_variant(ctx)
    mount = _mount_tmpfs(ctx, "full", "size=256k")
    (mount / "releases").mkdir()
    _fill(mount)
    ctx.recipe["promotion"]["to"] = str(mount / "releases")  # type: ignore[index]
    ctx.args = ["--out", str(ctx.root / "run")]
    ctx.extra_release_roots.append(mount)
    return mount / "releases"


CASES = [
    # recipe
    Case("recipe-syntax-error", "recipe", r_syntax, None, r"YAML syntax error at line \d+"),
    Case("recipe-tab-indent", "recipe", r_tab_indent, None, r"YAML syntax error at line \d+"),
    Case("recipe-unknown-key", "recipe", r_unknown_top_key, "colour", "unknown key"),
    Case("recipe-unknown-nested-key", "recipe", r_unknown_nested_key, "variants.fp16.keep_io_typ", "unknown key"),
    Case("recipe-wrong-type-scalar", "recipe", r_wrong_type_scalar, "bench.rounds", "integer"),
    Case("recipe-wrong-type-list", "recipe", r_wrong_type_list, "variants", "dictionary"),
    Case("recipe-wrong-length", "recipe", r_wrong_type_mean, "inputs.x.mean[2]", "missing"),
    Case("recipe-unknown-method", "recipe", r_unknown_method, "variants.fp16", "'method' must be one of"),
    Case("recipe-missing-method", "recipe", r_missing_method, "variants.fp16", "'method' must be one of"),
    Case("recipe-missing-evaluation", "recipe", r_missing_evaluation, "evaluation", "required field is missing"),
    Case("recipe-missing-model-path", "recipe", r_missing_model_path, "model.path", "required field is missing"),
    Case("recipe-duplicate-variant", "recipe", r_duplicate_variant, "variants.fp16", r"duplicate key 'fp16'.*line \d+"),
    Case("recipe-duplicate-top-key", "recipe", r_duplicate_top_key, "name", r"duplicate key 'name'.*line \d+"),
    Case("recipe-gate-min-above-max", "recipe", r_gate_min_above_max, "gates[0]", "min 0.99 > max 0.5"),
    Case("recipe-gate-without-bound", "recipe", r_gate_without_bound, "gates[0]", "needs 'min', 'max'"),
    Case("recipe-min-width-above-max", "recipe", r_min_width_above_max, "inputs.x.resize", "min_width"),
    Case("recipe-static-without-calibration", "recipe", r_static_without_calibration, "variants", r"variants \['int8'\] need a 'calibration'"),
    Case("recipe-zero-std", "recipe", r_zero_std, "inputs.x.std", "non-zero"),
    Case("recipe-scale-div-zero", "recipe", r_scale_div_zero, "inputs.x.scale", "fraction"),
    Case("recipe-unknown-metric", "recipe", r_unknown_metric, "gates[0].metric", "unknown metric 'accuracy'"),
    Case("recipe-inapplicable-metric", "recipe", r_inapplicable_metric, "gates[0].metric", "prob_map"),
    Case("recipe-gate-unknown-output", "recipe", r_gate_unknown_output, "variants.fp16.gates[0].output", "no output 'nope'"),
    Case("recipe-extends-loop", "recipe", r_extends_loop, "extends", "extends loop"),
    Case("recipe-extends-self", "recipe", r_extends_self, "extends", "extends loop"),
    Case("recipe-extends-missing", "recipe", r_extends_missing, "extends", "not found"),
    Case("recipe-extends-outside", "recipe", r_extends_outside, "extends", "--allow-extends-from"),
    Case("recipe-empty", "recipe", r_empty, None, "empty"),
    Case("recipe-not-a-mapping", "recipe", r_not_mapping, None, "must be a mapping"),
    Case("recipe-not-utf8", "recipe", r_not_utf8, None, "cannot read"),
    Case("recipe-file-missing", "recipe", r_recipe_missing, None, "recipe file not found"),
    Case("recipe-env-unset", "recipe", r_env_unset, "evaluation.source.images", "QUANT_TEST_SURELY_UNSET"),
    Case("recipe-unknown-preset", "recipe", r_unknown_preset, "preset", "unknown preset 'pentium3'"),
    Case("recipe-name-with-path", "recipe", r_name_with_slash, "name", "pattern"),
    Case("recipe-variant-name-with-path", "recipe", r_variant_path_name, "variants", r"variant name '\.\./\.\./etc/x'"),
    Case("recipe-no-variants", "recipe", r_no_variants, "variants", "at least one variant"),
    Case("recipe-python-tag", "recipe", r_python_tag, None, "python/object/apply"),
    Case("recipe-alias-bomb", "recipe", r_alias_bomb, None, "alias bomb"),
    Case("recipe-recursive-alias", "recipe", r_recursive_alias, "gates[0]", "refers to itself"),
    Case("recipe-nested-too-deeply", "recipe", r_deep_nesting, None, "nested too deeply"),
    Case("recipe-nul-in-a-path", "recipe", r_nul_in_path, "promotion.to", "NUL character"),
    Case("recipe-only-unknown", "recipe", r_only_unknown, "variants", "--only"),
    Case("recipe-bad-release-version", "recipe", r_bad_release_version, "--release-version", "v1, v2"),
    Case("recipe-existing-release-version", "recipe", r_existing_release_version, "--release-version", "never overwritten"),
    # model
    Case("model-missing", "model", m_missing, "model.path", "model file not found"),
    Case("model-is-a-folder", "model", m_directory, "model.path", "model file not found"),
    Case("model-empty", "model", m_empty, "model.path", "empty"),
    Case("model-truncated", "model", m_truncated, "model.path", "not a readable ONNX model"),
    Case("model-not-onnx", "model", m_not_onnx, "model.path", "not a readable ONNX model|not an ONNX model"),
    Case("model-fails-checker", "model", m_checker, "model.path", "onnx.checker"),
    Case("model-opset-too-old", "model", m_opset_too_old, "model.path", "opset 6"),
    Case("model-input-names", "model", m_input_names, "inputs.y", "no input 'y'"),
    Case("model-input-without-recipe-entry", "model", m_input_without_entry, "inputs", "model input 'unused' has no entry"),
    Case("model-output-names", "model", m_output_names, "outputs.logits", "no output 'logits'"),
    Case("model-metadata-key", "model", m_metadata_key, "outputs.probs.charset_metadata", "no metadata key"),
    Case("model-external-data-missing", "model", m_external_missing, "model.path", "missing"),
    Case("model-external-data-dotdot", "model", m_external_dotdot, "model.path", "escapes the model's folder; refused"),
    Case("model-external-data-absolute", "model", m_external_absolute, "model.path", "absolute path; refused"),
    Case("model-external-data-symlink", "model", m_external_symlink, "model.path", "escapes the model's folder; refused"),
    Case("model-protobuf-huge-length", "model", m_huge_length, "model.path", "not a readable ONNX model"),
    Case("model-protobuf-deep-nesting", "model", m_deep_nesting, "model.path", "not a readable ONNX model"),
    Case("model-over-2gb-single-file", "model", m_over_2gb_single_file, "model.path", "2 GB"),
    Case("model-package-missing", "model", m_package_missing, "model.package", "not installed"),
    Case("model-package-bad-name", "model", m_package_bad_name, "model.package", "not installed"),
    Case("model-onnxruntime-cannot-load", "model", m_ort_cannot_load, "model.path", "onnxruntime cannot load"),
    # data
    Case("data-empty-folder", "data", d_empty_folder, "evaluation.source.images", "no images"),
    Case("data-missing-folder", "data", d_missing_folder, "calibration.source.images", "image folder not found"),
    Case("data-corrupt-image", "data", d_corrupt_image, "evaluation.source.images", "unreadable image"),
    Case("data-text-named-jpg", "data", d_text_named_jpg, "calibration.source.images", "unreadable image"),
    Case("data-zero-byte-image", "data", d_zero_byte_image, "evaluation.source.images", "unreadable image"),
    Case("data-wrong-shape", "data", d_wrong_shape, "inputs.x", r"shape \[1, 3, 10, \d+\].*expects"),
    Case("data-wrong-layout", "data", d_wrong_layout, "inputs.x", "expects"),
    Case("data-npz-missing-input", "data", d_npz_missing_input, "evaluation.source.npz", "no array for model input"),
    Case("data-npz-not-a-zip", "data", d_npz_not_zip, "evaluation.source.npz", "not a readable .npz"),
    Case("data-npz-pickle", "data", d_npz_pickle, "evaluation.source.npz", "not a readable .npz"),
    Case("data-npz-wrong-shape", "data", d_npz_wrong_shape, "inputs.x", "expects"),
    Case("data-npz-no-rows", "data", d_npz_no_rows, "evaluation.source.npz", "non-zero number of samples"),
    Case("data-npz-truncated", "data", d_npz_truncated, "evaluation.source.npz", "not a readable .npz"),
    Case("data-npz-bad-member", "data", d_npz_bad_member, "evaluation.source.npz", "not a readable .npz"),
    Case("data-overlap-same-folder", "data", d_overlap_same_folder, "evaluation.source", "must be disjoint"),
    Case("data-overlap-renamed-copy", "data", d_overlap_renamed_copy, "evaluation.source", "zz_copy.png"),
    Case("recipe-search-without-tuning", "recipe", r_search_without_tuning, "tuning", "--allow-tuning-on-evaluation"),
    Case("data-fp32-cannot-run-sample", "data", d_fp32_cannot_run, "evaluation.source", "the FP32 model fails on sample"),
    Case("data-labels-missing", "data", d_labels_missing, "evaluation.source.labels", "labels file not found"),
    Case("data-labels-malformed", "data", d_labels_malformed, "evaluation.source.labels", "line 2"),
    # environment (real runs of the tiny model)
    Case("env-out-under-a-file", "environment", e_out_under_file, "--out", "cannot write"),
    Case("env-cache-under-a-file", "environment", e_cache_under_file, "--cache", "cannot write"),
    Case("env-release-under-a-file", "environment", e_release_under_file, "promotion.to", "not a folder|cannot"),
    Case("env-json-under-a-file", "environment", e_json_under_file, "--json", "not a folder|cannot"),
    # The words name the condition itself, so a case that could not set it up cannot pass as another one.
    Case("env-out-read-only", "environment", e_out_read_only, "--out", "Read-only file system"),
    Case("env-release-read-only", "environment", e_release_read_only, "promotion.to", "not writable|Read-only file system"),
    Case("env-out-disk-full", "environment", e_out_disk_full, "--out", "No space left on device"),
    Case("env-out-file-size-limit", "environment", e_out_file_size_limit, "--out", "File too large"),
    Case("env-release-disk-full", "environment", e_release_disk_full, "promotion.to", "No space left on device"),
]


@dataclass
class Outcome:
    ctx: Ctx
    expected_file: str
    done: subprocess.CompletedProcess[str] | None
    unavailable: str | None = None  # the machine could not set the case up
    release_files: list[str] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)


def _release_state(ctx: Ctx) -> tuple[list[str], list[str]]:
    """(files under every release root, leftover staging folders anywhere in the workspace)."""
    roots = [ctx.root / "releases", *ctx.extra_release_roots]
    files = sorted(str(p.relative_to(root)) for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file() and p.name != "filler")
    staging = sorted(str(p) for root in [ctx.root, *ctx.extra_release_roots] for p in root.rglob(".staging-*"))
    return files, staging


def _run_case(case: Case, root: Path) -> Outcome:
    ctx = _new_ctx(root)
    try:
        try:
            expected_file = case.setup(ctx)
        except Unavailable as missing:
            return Outcome(ctx, "", None, unavailable=str(missing))
        if isinstance(ctx.recipe, str):
            ctx.recipe_path.write_text(ctx.recipe, encoding="utf-8")
        else:
            ctx.recipe_path.write_text(_dump(ctx.recipe), encoding="utf-8")
        args = list(ctx.args)
        if "--recipe" not in args:
            args = ["--recipe", str(ctx.recipe_path), *args]
        if "--out" not in args:
            args += ["--out", str(ctx.root / "run")]
        if ctx.validate:
            args.append("--validate")
        done = subprocess.run(
            [sys.executable, "-m", "quant.cli", *args, "--quiet"],
            cwd=ctx.root, capture_output=True, text=True, timeout=180, preexec_fn=ctx.preexec,
        )
        files, staging = _release_state(ctx)
    finally:
        for mount in reversed(ctx.mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return Outcome(ctx, str(expected_file), done, release_files=files, staging=staging)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("bad_inputs")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case.id: pool.submit(_run_case, case, base / case.id) for case in CASES}
        return {name: future.result() for name, future in futures.items()}


# Fields named by bad-input errors that other test files check, because they need an optional extra's setting.
CHECKED_ELSEWHERE = {
    "algorithm": "tests/test_weight_only.py",
    "promotion.tracking_uri": "tests/test_mlflow.py",
    # family recipes (an encoder–decoder by part): every bad family input, each naming its field
    "family.folder": "tests/test_family_recipe.py",
    "family.generation.max_new_tokens": "tests/test_family_recipe.py",
    "family.generation.vocab": "tests/test_family_recipe.py",
    # --executor ray (extra 'ray'): checked against a real cluster. An unreachable --ray-address is not run:
    # ray.init retries it for minutes before it raises the ConnectionError quant turns into this error.
    "bench.resources": "tests/test_ray.py",
    "tasks.memory_mb": "tests/test_ray.py",
    "--ray-address": "tests/test_ray.py",
}


def test_every_field_a_bad_input_error_names_has_a_case() -> None:
    """Derived from the code, not from this list: a new `raise ...Error(..., field="x")` in quant/ needs a case here."""
    named = set()
    for source in (REPO / "quant").rglob("*.py"):
        named |= set(re.findall(r'field="([^"{]+)"', source.read_text(encoding="utf-8")))
    assert {"model.path", "promotion.to", "--out", "inputs"} <= named  # the scan finds the fields it should
    covered = {case.field for case in CASES}
    missing = sorted(named - covered - set(CHECKED_ELSEWHERE))
    assert missing == [], f"no bad-input case names field(s) {missing}"
    for field_name, test_file in CHECKED_ELSEWHERE.items():
        assert field_name not in covered and field_name.rsplit(".", 1)[-1] in (REPO / test_file).read_text(encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_file_and_field(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    if outcome.unavailable:
        if os.environ.get("CI"):  # CI must provide every condition: a case it cannot set up is a failure there
            pytest.fail(outcome.unavailable)
        pytest.skip(outcome.unavailable)
    done = outcome.done
    assert done is not None
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, f"exit {done.returncode}\nstdout: {done.stdout[-800:]}\nstderr: {done.stderr[-2000:]}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("quantize: error: "), line
    assert outcome.expected_file in line, f"the line does not name {outcome.expected_file}: {line}"
    if case.field is not None:
        assert f"field '{case.field}'" in line, line
    assert re.search(case.words, line, re.IGNORECASE), line
    # Nothing released, nothing half-released.
    assert sorted(outcome.release_files) == sorted(outcome.ctx.keep_releases), outcome.release_files
    assert outcome.staging == []
    if outcome.ctx.validate:
        assert not (outcome.ctx.root / "run").exists(), "--validate wrote the run folder"


def test_python_tag_did_not_run(outcomes: dict[str, Outcome]) -> None:
    assert not (outcomes["recipe-python-tag"].ctx.root / "pwned").exists()


def test_existing_release_is_left_alone(outcomes: dict[str, Outcome]) -> None:
    manifest = outcomes["recipe-existing-release-version"].ctx.root / "releases" / "tiny" / "v1" / "manifest.json"
    assert manifest.read_text() == "{}\n"


def test_extends_outside_is_allowed_with_the_flag(tmp_path: Path) -> None:
    """The refusal above is a policy, not a bug: --allow-extends-from opens exactly that folder."""
    ctx = _new_ctx(tmp_path / "recipes")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "base.yaml").write_text(_dump(ctx.recipe))  # type: ignore[arg-type]
    ctx.recipe_path.write_text("extends: ../shared/base.yaml\nname: child\n")
    refused = subprocess.run(
        [sys.executable, "-m", "quant.cli", "--recipe", str(ctx.recipe_path), "--validate"], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--allow-extends-from" in refused.stderr
    allowed = subprocess.run(
        [sys.executable, "-m", "quant.cli", "--recipe", str(ctx.recipe_path), "--validate", "--allow-extends-from", str(shared)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert allowed.returncode == 0, allowed.stderr
