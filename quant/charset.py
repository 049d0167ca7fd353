"""Character lists of CTC outputs, from the model's metadata or a PaddleOCR dictionary file.

PaddleOCR's convention (and rapidocr_onnxruntime's CTCLabelDecode, read from its source): one character
per line, only line breaks stripped (a line holding a space is the space character); the blank goes in
front at index 0 and, with `use_space_char`, a ' ' after the last listed character.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.errors import DataError, ModelError
from quant.model import file_sha256, package_root
from quant.recipe.schema import OutputSpec, resolve

BLANK = "<blank>"


@dataclass(frozen=True)
class Charset:
    """One output's character list (index = class) and where it came from, for the manifest."""

    characters: list[str]
    source: dict[str, Any]


def paddle_charset(entries: list[str], use_space_char: bool) -> list[str]:
    return [BLANK, *entries, *([" "] if use_space_char else [])]


def read_dictionary(path: Path, field: str) -> list[str]:
    """The entries of a `*_dict.txt`: one per line, '\\n' / '\\r\\n' stripped and nothing else."""
    if not path.is_file():
        raise DataError("dictionary file not found", file=str(path), field=field)
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the dictionary as UTF-8 text ({error})", file=str(path), field=field) from None
    if lines and lines[-1] == "":  # the newline ending the last line does not start another entry
        lines.pop()
    entries = [line.removesuffix("\r") for line in lines]
    if not entries:
        raise DataError("the dictionary file is empty", file=str(path), field=field)
    return entries


def output_charsets(outputs: dict[str, OutputSpec], metadata: dict[str, str], base_dir: Path) -> dict[str, Charset]:
    """The character list of every output that declares one (checked: a missing key or file is bad input)."""
    charsets: dict[str, Charset] = {}
    for name, spec in outputs.items():
        if spec.charset_metadata:
            if spec.charset_metadata not in metadata:
                raise ModelError(f"the model has no metadata key '{spec.charset_metadata}'", field=f"outputs.{name}.charset_metadata")
            entries = metadata[spec.charset_metadata].splitlines()  # as rapidocr reads its metadata
            charsets[name] = Charset(paddle_charset(entries, spec.use_space_char), {"metadata": spec.charset_metadata})
        elif spec.charset_file:
            if spec.charset_package:
                path = package_root(spec.charset_package, f"outputs.{name}.charset_package") / spec.charset_file
            else:
                path = resolve(base_dir, spec.charset_file)
            entries = read_dictionary(path, f"outputs.{name}.charset_file")
            where = {"file": path.name, "sha256": file_sha256(path)} | ({"package": spec.charset_package} if spec.charset_package else {})
            charsets[name] = Charset(paddle_charset(entries, spec.use_space_char), where)
    return charsets
