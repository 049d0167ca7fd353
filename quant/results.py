"""The run's documents, typed: results.json (what a run found) and manifest.json (what a release holds).

Each serialises itself (`to_json`) and loads back typed (`from_json`), so a reader of results.json — the
report, CI, the next run — works on the same structure the run wrote. A field that moves bumps
SCHEMA_VERSION (and the README says so). Per-variant records stay the plain dictionaries
`VariantOutcome.to_dict()` gives, so methods and metrics can add figures without a schema change.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from quant import __version__
from quant.checks import RunInputs
from quant.data.sources import SampleSource
from quant.model import file_sha256
from quant.outcome import VariantOutcome, json_number
from quant.provenance import environment
from quant.release.previous import changes_since_release, metric_table
from quant.splits import Split

SCHEMA_VERSION = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolRecord(Record):
    name: str
    version: str


class RecipeRecord(Record):
    name: str
    file: str
    sha256: str
    resolved: dict[str, Any]


class ModelRecord(Record):
    file: str
    sha256: str
    size_bytes: int
    opset: int


class SampleRecord(Record):
    id: str
    sha256: str


class SamplesRecord(Record):
    where: str
    fingerprint: str
    samples: list[SampleRecord]


class SplitsRecord(Record):
    """Which split produced which number: every variant's metrics and gates come from `gates`; a search's
    attempts and node ranking from `search` (variants[].search.tuned_on too)."""

    gates: str
    search: str | None
    tuned_on_evaluation: bool


class DataRecord(Record):
    calibration: SamplesRecord | None
    tuning: SamplesRecord | None
    evaluation: SamplesRecord
    splits: SplitsRecord


class ReferenceRecord(Record):
    seconds: float
    cache_hit: bool


class PromotionRecord(Record):
    """The policy's outcome, plus what the destination recorded (the folder; or registry, versions and alias)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    policy: str
    met: bool
    promoted: list[str]
    release: str | None


FAMILY_ONLY = ("family", "parts")  # fields only a model family has: left out of a one-model run's documents when empty
LEFT_OUT_WHEN_NONE = (*FAMILY_ONLY, "stages")  # stages: only a run that timed its stages has them (quant.stages)


def _without_family_fields(data: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in data.items() if not (k in LEFT_OUT_WHEN_NONE and v is None)}
    if isinstance(kept.get("variants"), dict):
        kept["variants"] = {name: _without_family_fields(v) if isinstance(v, dict) else v for name, v in kept["variants"].items()}
    return kept


class Document(Record):
    def to_json(self) -> str:
        """Standard JSON (NaN and infinities written as strings), indented, one trailing newline."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_dict(self) -> dict[str, Any]:
        # Python mode, then json_number: pydantic's JSON mode would turn NaN and infinities into null.
        return json_number(_without_family_fields(self.model_dump()))

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.model_validate(json.loads(text))


class RunResults(Document):
    """results.json."""

    schema_version: int = SCHEMA_VERSION
    tool: ToolRecord
    started: str
    finished: str
    recipe: RecipeRecord
    model: ModelRecord
    environment: dict[str, Any]
    data: DataRecord
    charsets: dict[str, dict[str, Any]]
    reference: ReferenceRecord
    variants: dict[str, dict[str, Any]]  # VariantOutcome.to_dict() by variant name
    regression: dict[str, Any] | None
    promotion: PromotionRecord
    verdict: str
    exit_code: int
    family: dict[str, Any] | None = None  # a model family: its FP32 parts and how it generates
    stages: list[dict[str, Any]] | None = None  # quant.stages: each stage's start (epoch seconds), duration, peak memory


class ManifestRecipe(Record):
    name: str
    file: str
    sha256: str
    resolved: dict[str, Any]


class SourceModelRecord(Record):
    file: str
    sha256: str
    size_bytes: int


class DataFingerprint(Record):
    fingerprint: str
    samples: int


class ManifestVariant(Record):
    method: str
    options: dict[str, Any]
    file: str
    size_ratio: float | None
    latency_ratio: float | None
    metrics: dict[str, dict[str, Any]]  # by output, '' holding the variant-wide ones
    gates: list[dict[str, Any]]
    parts: dict[str, dict[str, Any]] | None = None  # a family: per part (role) its file, method, options, sha256


class Manifest(Document):
    """manifest.json of a release, before the destination adds its version and file list."""

    schema_version: int = SCHEMA_VERSION
    recipe: ManifestRecipe
    source_model: SourceModelRecord
    data: dict[str, DataFingerprint]  # "evaluation" and, with a calibration set, "calibration"
    charsets: dict[str, dict[str, Any]]
    created: str
    environment: dict[str, Any]
    variants: dict[str, ManifestVariant]
    family: dict[str, Any] | None = None  # a model family: its FP32 parts and how it generates


# --------------------------------------------------------------------------- made from a run


def variant_metric_table(outcome: VariantOutcome) -> dict[str, dict[str, float]]:
    """The variant's metrics by output, '' holding size and latency (what the manifest keeps and regression gates read)."""
    latency = outcome.latency.ratio if outcome.latency else None
    return metric_table(outcome.metrics, {"size_ratio": outcome.size_ratio, "latency_ratio": latency})


def samples_record(source: SampleSource | None) -> SamplesRecord | None:
    if source is None:
        return None
    samples = [SampleRecord(id=s.id, sha256=s.fingerprint) for s in source.samples]
    return SamplesRecord(where=source.where, fingerprint=source.fingerprint, samples=samples)


def data_fingerprints(evaluation: SampleSource, calibration: SampleSource | None) -> dict[str, DataFingerprint]:
    """The manifest's record of the data a release was made and judged with."""
    data = {"evaluation": DataFingerprint(fingerprint=evaluation.fingerprint, samples=len(evaluation))}
    if calibration is not None:
        data["calibration"] = DataFingerprint(fingerprint=calibration.fingerprint, samples=len(calibration))
    return data


def manifest_variant(
    outcome: VariantOutcome, file: str, metrics: dict[str, dict[str, float]], parts: dict[str, dict[str, Any]] | None = None
) -> ManifestVariant:
    """What the manifest says of one promoted variant (`file`: its model file, or a family's folder with its `parts`)."""
    return ManifestVariant(
        method=outcome.method,
        options=outcome.options,
        file=file,
        size_ratio=outcome.size_ratio,
        latency_ratio=outcome.latency.ratio if outcome.latency else None,
        metrics=metrics,
        gates=[g.to_dict() for g in outcome.gates],
        parts=parts,
    )


def build_manifest(inputs: RunInputs, promoted: list[VariantOutcome], started: str) -> Manifest:
    recipe_file = inputs.loaded.path
    data = data_fingerprints(inputs.evaluation, inputs.calibration)
    return Manifest(
        recipe=ManifestRecipe(name=inputs.recipe.name, file=recipe_file.name, sha256=file_sha256(recipe_file), resolved=inputs.loaded.resolved),
        source_model=SourceModelRecord(file=inputs.model.path.name, sha256=inputs.model.sha256, size_bytes=inputs.model.size_bytes),
        data=data,
        charsets={name: charset.source for name, charset in inputs.charsets.items()},
        created=started,
        environment=environment(),
        variants={o.name: manifest_variant(o, f"{o.name}.onnx", variant_metric_table(o)) for o in promoted},
    )


def build_results(
    inputs: RunInputs,
    evaluation: Split,
    tuning: Split | None,
    outcomes: list[VariantOutcome],
    promotion: PromotionRecord,
    verdict: str,
    exit_code: int,
    started: str,
    stages: list[dict[str, Any]] | None = None,
) -> RunResults:
    loaded, model = inputs.loaded, inputs.model
    regression = None
    if inputs.previous:
        regression = changes_since_release(inputs.previous, {o.name: variant_metric_table(o) for o in outcomes if o.latency})
    return RunResults(
        tool=ToolRecord(name="quant", version=__version__),
        started=started,
        finished=now(),
        recipe=RecipeRecord(name=inputs.recipe.name, file=str(loaded.path), sha256=file_sha256(loaded.path), resolved=loaded.resolved),
        model=ModelRecord(file=str(model.path), sha256=model.sha256, size_bytes=model.size_bytes, opset=model.opset),
        environment=environment(),
        data=DataRecord(
            calibration=samples_record(inputs.calibration),
            tuning=samples_record(inputs.tuning),
            evaluation=samples_record(inputs.evaluation),
            splits=SplitsRecord(gates="evaluation", search=None if tuning is None else tuning.name, tuned_on_evaluation=inputs.tuned_on_evaluation),
        ),
        charsets={name: charset.source for name, charset in inputs.charsets.items()},
        reference=ReferenceRecord(seconds=round(evaluation.reference.seconds, 3), cache_hit=evaluation.reference.cache_hit),
        variants={o.name: o.to_dict() for o in outcomes},
        regression=regression,
        promotion=promotion,
        verdict=verdict,
        exit_code=exit_code,
        stages=stages,
    )


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
