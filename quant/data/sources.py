"""Sample sources (image folder, Hugging Face `datasets`, .npz): seeded choice, lazy loading, fingerprints.

A source never holds every sample in memory: it lists references, and loads one sample at a time.
"""

from __future__ import annotations

import hashlib
import json
import random
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from quant.data.transforms import image_to_tensor
from quant.errors import DataError
from quant.recipe.schema import DataSet, DatasetSource, ImageFolderSource, ImageInput, NpzSource, resolve

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Sample:
    """One sample: a stable id (file name or row), a content fingerprint, its label and slice if any."""

    id: str
    fingerprint: str
    label: str | None = None
    slice: str | None = None  # e.g. clean, blur, noise: results are also reported per slice
    sequence: str | None = None  # the sequence a step belongs to (npz `sequence`): fed closed-loop when the recipe has `state`


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SampleSource(ABC):
    """A set of samples that turns each into model feeds on demand."""

    def __init__(self, where: str, field: str, samples: list[Sample]) -> None:
        self.where = where
        self.field = field
        self.samples = samples

    @abstractmethod
    def feeds(self, sample: Sample) -> Feeds:
        """The model inputs for one sample (batch of one)."""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[tuple[Sample, Feeds]]:
        for sample in self.samples:
            yield sample, self.feeds(sample)

    @property
    def fingerprint(self) -> str:
        """Hash of the chosen samples' contents: changes when any image or tensor changes."""
        return _sha256("\n".join(f"{s.id}:{s.fingerprint}" for s in self.samples).encode())

    @property
    @abstractmethod
    def feeds_signature(self) -> str:
        """How a sample becomes feeds (pre-processing, arrays read): a cache over the feeds keys on it."""

    def subset(self, count: int | None) -> SampleSource:
        """The first `count` samples (already in seeded order) as a source of the same kind."""
        if count is None or count >= len(self.samples):
            return self
        return self.window(0, count)

    def window(self, start: int, stop: int) -> SampleSource:
        """Samples start..stop-1 (a shard of an evaluation) as a source of the same kind."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.samples = self.samples[start:stop]
        return clone


def inputs_signature(inputs: dict[str, ImageInput]) -> str:
    """Every pre-processing field of every input (resize, scale, mean/std, colour, layout, padding)."""
    return json.dumps({name: spec.model_dump(mode="json") for name, spec in inputs.items()}, sort_keys=True)


def _choose(refs: list[Any], count: int | None, seed: int) -> list[Any]:
    """A seeded choice of `count` refs, kept in their sorted order so runs are reproducible."""
    if count is None or count >= len(refs):
        return list(refs)
    chosen = sorted(random.Random(seed).sample(range(len(refs)), count))
    return [refs[i] for i in chosen]


# --------------------------------------------------------------------------- images


def _read_labels(path: Path, field: str, what: str = "labels") -> dict[str, str]:
    """A `file<TAB>text` table (labels.tsv, slices.tsv), an optional header row skipped."""
    if not path.is_file():
        raise DataError(f"{what} file not found", file=str(path), field=field)
    labels: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, tab, text = line.partition("\t")
        if not tab:
            raise DataError(f"line {number} is not 'file<TAB>text'", file=str(path), field=field)
        if number == 1 and name.strip().lower() in ("file", "filename", "image", "path"):
            continue  # header row
        labels[name.strip()] = text
    return labels


def _open_image(path: Path, field: str | None = None) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            # Converted here so a mode PIL cannot turn into RGB (e.g. "La") is a data error too.
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"unreadable image ({type(error).__name__})", file=str(path), field=field) from None


class ImageFolder(SampleSource):
    def __init__(self, spec: ImageFolderSource, dataset: DataSet, base_dir: Path, inputs: dict[str, ImageInput], field: str) -> None:
        folder = resolve(base_dir, spec.images)
        if not folder.is_dir():
            raise DataError("image folder not found", file=str(folder), field=f"{field}.source.images")
        pattern = "**/*" if spec.recursive else "*"
        files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError("no images (png, jpg, jpeg, bmp, webp, tif) in the folder", file=str(folder), field=f"{field}.source.images")
        if not inputs:
            raise DataError("an image source needs 'inputs' saying how images become tensors", field="inputs")
        labels = _read_labels(resolve(folder, spec.labels), f"{field}.source.labels") if spec.labels else {}
        slices = _read_labels(resolve(folder, spec.slices), f"{field}.source.slices", "slices") if spec.slices else {}
        chosen = _choose(files, dataset.samples, dataset.seed)
        names = [str(p.relative_to(folder)) for p in chosen]
        unsliced = [n for n in names if slices and n not in slices]
        if unsliced:
            raise DataError(
                f"{len(unsliced)} image(s) have no slice (e.g. '{unsliced[0]}')",
                file=str(resolve(folder, spec.slices or "")),
                field=f"{field}.source.slices",
            )
        samples = [
            Sample(id=name, fingerprint=_sha256(p.read_bytes()), label=labels.get(name), slice=slices.get(name, "").strip() or None)
            for name, p in zip(names, chosen)
        ]
        super().__init__(str(folder), field, samples)
        self.folder = folder
        self.inputs = inputs

    @property
    def feeds_signature(self) -> str:
        return inputs_signature(self.inputs)

    def feeds(self, sample: Sample) -> Feeds:
        image = _open_image(self.folder / sample.id, f"{self.field}.source.images")
        return {name: image_to_tensor(image, spec) for name, spec in self.inputs.items()}


# --------------------------------------------------------------------------- npz


class NpzTensors(SampleSource):
    """Rows of a .npz. A .npz member cannot be memory-mapped, so each array is read once, on first
    use, and dropped when the source is sent to a build process (which reads it again)."""

    def __init__(self, spec: NpzSource, dataset: DataSet, base_dir: Path, input_names: list[str], field: str) -> None:
        path = resolve(base_dir, spec.npz)
        if not path.is_file():
            raise DataError("npz file not found", file=str(path), field=f"{field}.source.npz")
        self.path = path
        self.input_names = input_names
        unknown = [n for n in spec.unbatched if n not in input_names]
        if unknown:
            raise DataError(f"{unknown} are not model inputs; the inputs are {input_names}", field=f"{field}.source.unbatched")
        self.unbatched = list(spec.unbatched)
        self._arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(path, allow_pickle=False) as archive:  # allow_pickle=False: an npz is data, never code
                names = list(archive.files)
                missing = [n for n in input_names if n not in names]
                if missing:
                    raise DataError(f"no array for model input(s) {missing}; arrays present: {names}", file=str(path), field=f"{field}.source.npz")
                self._arrays = {n: archive[n] for n in input_names}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(f"not a readable .npz ({error})", file=str(path), field=f"{field}.source.npz") from None
        counts = {n: int(a.shape[0]) if a.ndim else 0 for n, a in self._arrays.items()}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise DataError(f"arrays need the same, non-zero number of samples on axis 0; got {counts}", file=str(path), field=f"{field}.source.npz")
        rows = next(iter(counts.values()))
        if spec.sequence is None:
            chosen = _choose(list(range(rows)), dataset.samples, dataset.seed)
            samples = [Sample(id=f"{path.name}[{i}]", fingerprint=self._row_hash(i)) for i in chosen]
        else:
            sequences = self._sequences(spec.sequence, rows, f"{field}.source.sequence")
            chosen_ids = _choose(list(sequences), dataset.samples, dataset.seed)  # whole sequences, never cut
            samples = [
                Sample(id=f"{path.name}[{i}]", fingerprint=self._row_hash(i), sequence=name) for name in chosen_ids for i in sequences[name]
            ]
        super().__init__(str(path), field, samples)

    def _sequences(self, array_name: str, rows: int, field: str) -> dict[str, list[int]]:
        """{sequence id: its rows in step order}; the rows of a sequence must be consecutive."""
        with np.load(self.path, allow_pickle=False) as archive:
            if array_name not in archive.files:
                present = list(archive.files)
                raise DataError(f"no array '{array_name}' for the sequence ids; arrays present: {present}", file=str(self.path), field=field)
            ids = archive[array_name]
        if ids.ndim != 1 or len(ids) != rows:
            raise DataError(f"'{array_name}' needs one value per row ({rows}); its shape is {list(ids.shape)}", file=str(self.path), field=field)
        sequences: dict[str, list[int]] = {}
        for row, value in enumerate(ids.tolist()):
            name = str(value)
            if name in sequences and sequences[name][-1] != row - 1:
                raise DataError(f"the rows of sequence '{name}' are not consecutive (row {row})", file=str(self.path), field=field)
            sequences.setdefault(name, []).append(row)
        return sequences

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            with np.load(self.path, allow_pickle=False) as archive:
                self._arrays = {n: archive[n] for n in self.input_names}
        return self._arrays[name]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def _row_hash(self, index: int) -> str:
        digest = hashlib.sha256()
        for name in self.input_names:
            digest.update(np.ascontiguousarray(self._array(name)[index]).tobytes())
        return digest.hexdigest()

    @property
    def feeds_signature(self) -> str:
        return json.dumps({"npz": self.input_names, "unbatched": self.unbatched})

    def feeds(self, sample: Sample) -> Feeds:
        index = int(sample.id.rsplit("[", 1)[1].rstrip("]"))
        # A row of a batched input keeps a leading axis of one (the batch); an unbatched one is fed as stored.
        rows = {name: slice(index, index + 1) if name not in self.unbatched else index for name in self.input_names}
        return {name: np.array(self._array(name)[row], order="C") for name, row in rows.items()}  # (ascontiguousarray makes a scalar 1-d)


# --------------------------------------------------------------------------- datasets


class HFDataset(SampleSource):
    def __init__(self, spec: DatasetSource, dataset: DataSet, base_dir: Path, inputs: dict[str, ImageInput], field: str) -> None:
        try:
            import datasets
        except ImportError:
            raise DataError("the 'datasets' package is not installed (pip install 'quant[datasets]')", field=f"{field}.source") from None
        location = resolve(base_dir, spec.dataset)
        if not location.exists():
            raise DataError("dataset location not found", file=str(location), field=f"{field}.source.dataset")
        if spec.format == "imagefolder":
            kwargs: dict[str, Any] = {"data_dir": str(location)}
        else:
            files = sorted(location.glob(f"*.{spec.format}")) if location.is_dir() else [location]
            kwargs = {"data_files": [str(f) for f in files]}
        try:
            # Offline by construction: only local files are named, and hub access is switched off.
            datasets.config.HF_DATASETS_OFFLINE = True
            table = datasets.load_dataset(spec.format, split=spec.split, **kwargs)
        except Exception as error:  # datasets raises many types for bad local data
            raise DataError(
                f"cannot load dataset ({type(error).__name__}: {str(error)[:160]})", file=str(location), field=f"{field}.source"
            ) from None
        if spec.image_column not in table.column_names:
            raise DataError(
                f"no column '{spec.image_column}'; columns: {table.column_names}", file=str(location), field=f"{field}.source.image_column"
            )
        for column, name in (("label_column", spec.label_column), ("slice_column", spec.slice_column)):
            if name and name not in table.column_names:
                raise DataError(f"no column '{name}'; columns: {table.column_names}", file=str(location), field=f"{field}.source.{column}")
        self.table = table
        self.spec = spec
        self.inputs = inputs
        chosen = _choose(list(range(len(table))), dataset.samples, dataset.seed)
        samples = []
        for index in chosen:
            row = table[index]
            image = self._image(row, index, str(location))
            label = str(row[spec.label_column]) if spec.label_column else None
            slice_name = str(row[spec.slice_column]) if spec.slice_column else None
            samples.append(Sample(id=f"row{index}", fingerprint=_sha256(image.tobytes() + str(image.size).encode()), label=label, slice=slice_name))
        super().__init__(str(location), field, samples)

    def _image(self, row: dict[str, Any], index: int, where: str) -> Image.Image:
        value = row[self.spec.image_column]
        if not isinstance(value, Image.Image):
            raise DataError(f"row {index}: column '{self.spec.image_column}' is not an image", file=where, field=f"{self.field}.source.image_column")
        return value

    @property
    def feeds_signature(self) -> str:
        return inputs_signature(self.inputs)

    def feeds(self, sample: Sample) -> Feeds:
        index = int(sample.id.removeprefix("row"))
        image = self._image(self.table[index], index, self.where)
        return {name: image_to_tensor(image, spec) for name, spec in self.inputs.items()}


def open_source(dataset: DataSet, base_dir: Path, inputs: dict[str, ImageInput], input_names: list[str], field: str) -> SampleSource:
    """The sample source a recipe's data set names."""
    spec = dataset.source
    if isinstance(spec, ImageFolderSource):
        return ImageFolder(spec, dataset, base_dir, inputs, field)
    if isinstance(spec, NpzSource):
        return NpzTensors(spec, dataset, base_dir, input_names, field)
    return HFDataset(spec, dataset, base_dir, inputs, field)


def check_disjoint(earlier: SampleSource, later: SampleSource) -> None:
    """Splits must not share a sample (by content, whatever the file names): refuse any sample of `later`
    whose content is also in `earlier`. Calibration, tuning and evaluation are checked pairwise."""
    seen = {s.fingerprint: s.id for s in earlier.samples}
    shared = [(seen[s.fingerprint], s.id) for s in later.samples if s.fingerprint in seen]
    if shared:
        first_earlier, first_later = shared[0]
        raise DataError(
            f"{len(shared)} {later.field} sample(s) are also {earlier.field} samples (e.g. '{first_later}' = '{first_earlier}'); "
            "the sets must be disjoint",
            file=later.where,
            field=f"{later.field}.source",
        )
