"""Input data for the magika recipe (recipes/examples/magika.yaml): files of many content types, made here
from seeded content, turned into the model's input with magika's own feature extractor.

For each split (calib, tune, eval) the script writes files of ~20 content types (Python, C, JavaScript,
shell, HTML, XML, JSON, CSV, YAML, INI, Markdown, LaTeX, SQL, plain text; PNG, JPEG, GIF, BMP, WAV, PDF,
gzip, bzip2, zip, tar, SQLite), each with its own seeded words and numbers so no two files (and no two
splits) share content, then asks magika 1.0.3 how it reads them: `Magika._get_result_or_features_from_path`
returns the model's features (the first and last 1024 bytes after stripping whitespace, padded with 256)
or, for files too small for the model, an answer without it (such files are left out). One .npz per split:
`bytes` int32 [files, 2048], the model's input, and `names`, the file each row came from.

    pip install magika==1.0.3
    python tools/make_magika_data.py [--out calibration_data/magika]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import sqlite3
import tarfile
import tempfile
import wave
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from magika import Magika
from PIL import Image

FILES_PER_TYPE = {"calib": 2, "tune": 2, "eval": 4}
SEEDS = {"calib": 11, "tune": 12, "eval": 13}
WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "river", "stone", "cloud", "paper", "window", "garden", "yellow", "orange", "number",
    "table", "chair", "market", "signal", "engine", "rocket", "planet", "forest", "summer", "winter", "autumn", "spring", "silver",
    "golden", "bridge", "tunnel", "castle",
]  # fmt: skip


def words(rng: np.random.Generator, count: int) -> list[str]:
    return [WORDS[i] for i in rng.integers(0, len(WORDS), count)]


def sentence(rng: np.random.Generator) -> str:
    return " ".join(words(rng, int(rng.integers(6, 14)))).capitalize() + "."


def python_source(rng: np.random.Generator) -> bytes:
    names = words(rng, 6)
    body = "\n\n".join(
        f"def {a}_{b}(value: int) -> int:\n    \"\"\"{sentence(rng)}\"\"\"\n    total = value * {int(rng.integers(2, 99))}\n"
        f"    for item in range({int(rng.integers(3, 30))}):\n        total += item\n    return total"
        for a, b in zip(names[::2], names[1::2])
    )
    return f"import os\nimport sys\n\n\n{body}\n\n\nif __name__ == \"__main__\":\n    print({names[0]}_{names[1]}(3))\n".encode()


def c_source(rng: np.random.Generator) -> bytes:
    name = "_".join(words(rng, 2))
    lines = "\n".join(f"    sum += values[{i}] * {int(rng.integers(1, 50))};" for i in range(int(rng.integers(5, 15))))
    return f"#include <stdio.h>\n#include <stdlib.h>\n\nstatic int {name}(const int *values) {{\n    int sum = 0;\n{lines}\n    return sum;\n}}\n\nint main(void) {{\n    int v[32] = {{0}};\n    printf(\"%d\\n\", {name}(v));\n    return 0;\n}}\n".encode()  # noqa: E501


def javascript(rng: np.random.Generator) -> bytes:
    name = "".join(w.capitalize() for w in words(rng, 2))
    items = ", ".join(f"'{w}'" for w in words(rng, 8))
    return f"const items = [{items}];\n\nfunction show{name}(list) {{\n  return list.map((x, i) => `${{i}}: ${{x}}`).join('\\n');\n}}\n\ndocument.addEventListener('DOMContentLoaded', () => {{\n  console.log(show{name}(items));\n}});\n".encode()  # noqa: E501


def shell(rng: np.random.Generator) -> bytes:
    folder = "/".join(words(rng, 3))
    return f"#!/bin/sh\nset -e\nmkdir -p /tmp/{folder}\nfor f in {' '.join(words(rng, 5))}; do\n  echo \"$f\" >> /tmp/{folder}/list.txt\ndone\ngrep -c . /tmp/{folder}/list.txt\n".encode()  # noqa: E501


def html(rng: np.random.Generator) -> bytes:
    paragraphs = "\n".join(f"    <p class=\"{w}\">{sentence(rng)}</p>" for w in words(rng, 5))
    return f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n  <title>{sentence(rng)}</title>\n</head>\n<body>\n  <div id=\"main\">\n{paragraphs}\n  </div>\n</body>\n</html>\n".encode()  # noqa: E501


def xml(rng: np.random.Generator) -> bytes:
    rows = "\n".join(f"  <item id=\"{i}\" name=\"{w}\">{int(rng.integers(0, 1000))}</item>" for i, w in enumerate(words(rng, 8)))
    return f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<catalog>\n{rows}\n</catalog>\n".encode()


def json_file(rng: np.random.Generator) -> bytes:
    data = {w: {"count": int(rng.integers(0, 500)), "tags": words(rng, 3), "ok": bool(rng.integers(0, 2))} for w in words(rng, 6)}
    return json.dumps(data, indent=2).encode()


def csv_file(rng: np.random.Generator) -> bytes:
    rows = "\n".join(f"{i},{w},{rng.normal(100, 20):.2f},{int(rng.integers(0, 9))}" for i, w in enumerate(words(rng, 25)))
    return f"id,name,price,stock\n{rows}\n".encode()


def yaml_file(rng: np.random.Generator) -> bytes:
    entries = "\n".join(
        f"  {w}:\n    size: {int(rng.integers(1, 64))}\n    enabled: {'true' if rng.integers(0, 2) else 'false'}" for w in words(rng, 6)
    )
    return f"version: {int(rng.integers(1, 4))}\nservices:\n{entries}\n".encode()


def ini_file(rng: np.random.Generator) -> bytes:
    sections = "\n".join(f"[{w}]\npath = /var/lib/{w}\nretries = {int(rng.integers(1, 9))}\n" for w in words(rng, 4))
    return sections.encode()


def markdown(rng: np.random.Generator) -> bytes:
    items = "\n".join(f"- **{w}**: {sentence(rng)}" for w in words(rng, 5))
    return f"# {sentence(rng)}\n\n{sentence(rng)} {sentence(rng)}\n\n## Items\n\n{items}\n\n```\nmake all\n```\n".encode()


def latex(rng: np.random.Generator) -> bytes:
    return (
        f"\\documentclass{{article}}\n\\usepackage{{amsmath}}\n\\begin{{document}}\n\\section{{{sentence(rng)}}}\n{sentence(rng)}\n"
        f"\\begin{{equation}}\n  x = \\frac{{{int(rng.integers(1, 9))}}}{{y + {int(rng.integers(1, 9))}}}\n\\end{{equation}}\n\\end{{document}}\n"
    ).encode()


def sql(rng: np.random.Generator) -> bytes:
    table = "_".join(words(rng, 2))
    values = ",\n".join(f"  ({i}, '{w}', {int(rng.integers(0, 999))})" for i, w in enumerate(words(rng, 10)))
    return f"CREATE TABLE {table} (\n  id INTEGER PRIMARY KEY,\n  name TEXT NOT NULL,\n  amount INTEGER\n);\n\nINSERT INTO {table} (id, name, amount) VALUES\n{values};\n\nSELECT name, SUM(amount) FROM {table} GROUP BY name;\n".encode()  # noqa: E501


def text(rng: np.random.Generator) -> bytes:
    return "\n\n".join(" ".join(sentence(rng) for _ in range(5)) for _ in range(4)).encode()


def image(fmt: str) -> Callable[[np.random.Generator], bytes]:
    def make(rng: np.random.Generator) -> bytes:
        size = (int(rng.integers(40, 160)), int(rng.integers(40, 160)))
        pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        pixels[: size[1] // 2] = rng.integers(0, 255, 3)  # half flat colour, half noise
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        return buffer.getvalue()

    return make


def wav(rng: np.random.Generator) -> bytes:
    tone = np.sin(2 * np.pi * rng.uniform(200, 900) * np.arange(8000) / 8000) * 8000
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(tone.astype(np.int16).tobytes())
    return buffer.getvalue()


def pdf(rng: np.random.Generator) -> bytes:
    """A one-page PDF written by hand: objects, a compressed content stream, the xref table."""
    content = zlib.compress(f"BT /F1 12 Tf 72 720 Td ({sentence(rng)}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def gzip_file(rng: np.random.Generator) -> bytes:
    return gzip.compress(csv_file(rng), mtime=0)


def bzip2_file(rng: np.random.Generator) -> bytes:
    return bz2.compress(text(rng))


def zip_file(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in words(rng, 3):
            archive.writestr(zipfile.ZipInfo(f"{name}.txt", (2020, 1, 1, 0, 0, 0)), text(rng))
    return buffer.getvalue()


def tar_file(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in words(rng, 2):
            data = python_source(rng)
            info = tarfile.TarInfo(f"{name}.py")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sqlite_file(rng: np.random.Generator) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "db.sqlite"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount INTEGER)")
            db.executemany("INSERT INTO items (name, amount) VALUES (?, ?)", [(w, int(rng.integers(0, 999))) for w in words(rng, 30)])
        return path.read_bytes()


MAKERS: dict[str, Callable[[np.random.Generator], bytes]] = {
    "py": python_source, "c": c_source, "js": javascript, "sh": shell, "html": html, "xml": xml, "json": json_file,
    "csv": csv_file, "yaml": yaml_file, "ini": ini_file, "md": markdown, "tex": latex, "sql": sql, "txt": text,
    "png": image("PNG"), "jpg": image("JPEG"), "gif": image("GIF"), "bmp": image("BMP"), "wav": wav, "pdf": pdf,
    "gz": gzip_file, "bz2": bzip2_file, "zip": zip_file, "tar": tar_file, "sqlite": sqlite_file,
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "calibration_data" / "magika")
    args = parser.parse_args()
    magika = Magika()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, count in FILES_PER_TYPE.items():
        rng = np.random.default_rng(SEEDS[split])
        rows, names, labels = [], [], []
        with tempfile.TemporaryDirectory() as folder:
            for suffix, make in MAKERS.items():
                for index in range(count):
                    path = Path(folder) / f"{split}_{index}.{suffix}"
                    path.write_bytes(make(rng))
                    _, features = magika._get_result_or_features_from_path(path)  # magika's own extractor
                    if features is None:
                        continue  # answered without the model (too small): not a model input
                    rows.append(features.beg[:1024] + features.end[-1024:])
                    names.append(path.name)
                    labels.append(str(magika.identify_path(path).output.label))
        np.savez_compressed(args.out / f"{split}.npz", bytes=np.array(rows, np.int32), names=np.array(names))
        print(f"{split}: {len(rows)} files; magika reads them as {sorted(set(labels))}")


if __name__ == "__main__":
    main()
