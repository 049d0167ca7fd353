"""Promotion into an MLflow model registry (optional extra `quant[mlflow]`).

Each promoted variant gets its own MLflow run (params, metrics, manifest.json, metrics.json and the
model in MLflow's ONNX flavour) and becomes a version of a registered model. The alias (e.g.
`champion`) is the commit point: it moves last, and only when every gate of every variant passed.
A failure part-way deletes the versions this run created; a killed run leaves its versions tagged
`quant.release: incomplete` (never aliased, never a "last release"), and the next run on the same
host deletes them, so the registry never shows a half release.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from quant.errors import OutputError
from quant.files import alive, check_can_create
from quant.model import file_sha256
from quant.recipe.schema import Promotion, resolve
from quant.release.bundle import Published, Release, copy_with_metadata
from quant.release.previous import PreviousRelease
from quant.testpoint import pause_point

SQLITE_PREFIX = "sqlite:///"
METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- /]")
TWO_GB = 2 * 1024**3
RELEASE_TAG = "quant.release"  # "incomplete" while a run registers, "complete" once its alias step is done
WRITER_TAG = "quant.writer"  # host:pid of the run that registered the version


def _mlflow() -> Any:
    """The mlflow module, or one clear bad-input error when the optional extra is not installed."""
    # Set before mlflow is imported, and only by a run that uses it: MLflow 3 sends usage telemetry by default
    # (machines here have no internet and a release tool should not phone home), and its progress bars are not ours.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # --quiet means quiet
    try:
        import mlflow
        import mlflow.onnx
    except ImportError as error:
        raise OutputError(f"'to: mlflow' needs the optional extra: pip install 'quant[mlflow]' ({error})", field="promotion.to") from None
    for chatty in ("mlflow", "alembic"):  # database set-up and "registered model" lines are not ours to log
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return mlflow


def rebased_uri(uri: str, base_dir: Path) -> str:
    """A relative SQLite path is taken from the recipe's folder, like every other path in a recipe."""
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        return SQLITE_PREFIX + str(resolve(base_dir, uri[len(SQLITE_PREFIX):]).resolve())
    return uri


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def _writer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def metric_key(output: str, metric: str) -> str:
    key = f"{output}.{metric}" if output else metric
    return METRIC_KEY_UNSAFE.sub("_", key)


def _signature(model: onnx.ModelProto) -> Any:
    """Tensor signature from the graph (dynamic dimensions as -1), so MLflow can check inputs."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    initializers = {i.name for i in model.graph.initializer}

    def specs(values: Any) -> Schema:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            out.append(TensorSpec(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type), shape, value.name))
        return Schema(out)

    return ModelSignature(specs(model.graph.input), specs(model.graph.output))


@dataclass(frozen=True)
class MlflowRegistry:
    """The registry named by a recipe's `promotion` section."""

    tracking_uri: str
    model_name: str
    alias: str | None
    experiment: str
    artifact_location: str | None
    recipe: str
    variants: tuple[str, ...]

    @classmethod
    def from_recipe(cls, promotion: Promotion, base_dir: Path, recipe: str, variants: tuple[str, ...]) -> MlflowRegistry:
        uri = rebased_uri(promotion.tracking_uri or "", base_dir)
        database = _sqlite_file(uri)
        artifacts = promotion.artifact_location
        if artifacts is not None and "://" not in artifacts:
            artifacts = str(resolve(base_dir, artifacts).resolve())
        elif artifacts is None and database is not None:
            artifacts = str(database.parent / "mlartifacts")  # not MLflow's default ./mlruns under whatever folder we run from
        return cls(uri, promotion.model_name or "", promotion.alias, promotion.experiment or f"quant/{recipe}", artifacts, recipe, variants)

    def name_for(self, variant: str) -> str:
        return self.model_name.replace("{variant}", variant).replace("{recipe}", self.recipe)

    # ------------------------------------------------------------------ before building

    def check_version(self, version: str | None) -> None:
        if version is not None:
            raise OutputError("--release-version names release-folder versions; the MLflow registry numbers its own", field="--release-version")

    def check_writable(self) -> None:
        """Fail before hours of building: MLflow installed, SQLite folder creatable, a server reachable."""
        mlflow = _mlflow()
        database = _sqlite_file(self.tracking_uri)
        if database is not None:
            check_can_create(database.parent, "promotion.tracking_uri")
            if not database.exists():
                return  # created on first registration
        try:
            mlflow.MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri).search_experiments(max_results=1)
        except Exception as error:  # any transport or store error means: the registry cannot be used
            raise OutputError(f"the MLflow registry cannot be reached: {error}", file=self.tracking_uri, field="promotion.tracking_uri") from None

    def previous(self) -> PreviousRelease | None:
        """The manifest logged with the newest version this recipe registered (for regression gates)."""
        database = _sqlite_file(self.tracking_uri)
        if database is not None and not database.exists():
            return None  # nothing registered yet, and --validate must not create the database
        mlflow = _mlflow()
        names = {self.name_for(v) for v in self.variants}
        try:
            client = mlflow.MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
            versions = client.search_model_versions(f"tags.`quant.recipe` = '{self.recipe}'", order_by=["creation_timestamp DESC"])
            for version in versions:
                if version.name not in names or not version.run_id or version.tags.get(RELEASE_TAG) != "complete":
                    continue
                with tempfile.TemporaryDirectory() as folder:
                    path = mlflow.artifacts.download_artifacts(
                        run_id=version.run_id, artifact_path="manifest.json", dst_path=folder, tracking_uri=self.tracking_uri
                    )
                    manifest = json.loads(Path(path).read_text(encoding="utf-8"))
                return PreviousRelease(f"{version.name} v{version.version}", manifest)
        except Exception as error:
            raise OutputError(
                f"cannot read the last release from the MLflow registry: {error}", file=self.tracking_uri, field="promotion.tracking_uri"
            ) from None
        return None

    # ------------------------------------------------------------------ promotion

    def publish(self, release: Release) -> Published:
        models, metadata = release.models, release.metadata
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        client = mlflow.MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        created: list[tuple[str, str]] = []
        earlier_aliases: dict[str, str | None] = {}  # where the alias pointed before this run moved it
        aliased: dict[str, str] = {}
        try:
            self._remove_abandoned(client, {self.name_for(v) for v in models})
            experiment_id = self._experiment_id(client)
            with tempfile.TemporaryDirectory(prefix="quant-mlflow-") as folder:
                files = {}
                for variant, path in models.items():
                    (Path(folder) / variant).mkdir()  # one folder each: external data files keep their names
                    files[variant] = copy_with_metadata(path, Path(folder) / variant / f"{variant}.onnx", metadata[variant])
                manifest = {
                    **release.manifest,
                    "registry": {"tracking_uri": self.tracking_uri, "experiment": self.experiment, "model_name": self.model_name},
                    "files": [{"variant": v, "file": p.name, "sha256": file_sha256(p)} for v, written in files.items() for p in written],
                }
                for variant in models:
                    created.append(
                        self._register(mlflow, experiment_id, variant, files[variant][0], manifest, metadata[variant], release.metrics[variant])
                    )
                    pause_point("registration")  # a version is registered, the release is not complete
            if release.all_gates_passed and self.alias:
                earlier_aliases = self._aliases(client, {name for name, _ in created})
                aliased = self._move_alias(client, dict(zip(models, created)), release.ranked)
            for name, number in created:
                client.set_model_version_tag(name, number, RELEASE_TAG, "complete")
        except OutputError:
            self._roll_back(client, created, earlier_aliases)
            raise
        except Exception as error:
            self._roll_back(client, created, earlier_aliases)
            raise OutputError(f"cannot register in the MLflow registry: {error}", file=self.tracking_uri, field="promotion.tracking_uri") from None
        except BaseException:
            self._roll_back(client, created, earlier_aliases)
            raise
        versions = {
            variant: {"model_name": name, "version": number, "model_uri": f"models:/{name}/{number}"}
            for variant, (name, number) in zip(models, created)
        }
        where = f"{self.tracking_uri}: " + ", ".join(f"{v['model_name']} v{v['version']} ({variant})" for variant, v in versions.items())
        if self.alias:
            where += f"; alias '{self.alias}' " + (
                f"-> {', '.join(f'{n} v{num}' for n, num in aliased.items())}" if aliased else "not moved (not every gate passed)"
            )
        record = {
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "versions": versions,
            "alias": self.alias,
            "alias_moved_to": aliased,
        }
        return Published(where, record)

    def _experiment_id(self, client: Any) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(self.experiment, artifact_location=self.artifact_location)

    def _register(self, mlflow: Any, experiment_id: str, variant: str, model_file: Path, manifest: dict[str, Any],
                  tags: dict[str, str], metrics: dict[str, dict[str, float]]) -> tuple[str, str]:
        flat = {
            metric_key(output, metric): float(value)
            for output, table in metrics.items()
            for metric, value in table.items()
            if isinstance(value, (int, float))
        }
        entry = manifest["variants"][variant]
        model = onnx.load(str(model_file))
        import onnxruntime

        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{self.recipe}/{variant}", tags={**tags, "quant.sha256": file_sha256(model_file)}
        ):
            mlflow.log_params({"method": entry["method"], **{f"option.{k}": json.dumps(v) for k, v in (entry.get("options") or {}).items()}})
            mlflow.log_metrics(flat)
            mlflow.log_dict(manifest, "manifest.json")
            mlflow.log_dict({"metrics": metrics, "gates": entry.get("gates", [])}, "metrics.json")
            info = mlflow.onnx.log_model(
                model,
                name="model",
                signature=_signature(model),
                pip_requirements=[
                    f"onnx=={onnx.__version__}",
                    f"onnxruntime=={onnxruntime.__version__}",
                ],  # pinned, not inferred by loading the model again
                save_as_external_data=model.ByteSize() >= TWO_GB,
                metadata={"quant": tags},
            )
            with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Successfully registered ..." itself; the summary says it
                version = mlflow.register_model(
                    info.model_uri, self.name_for(variant), tags={**tags, "quant.gates": "passed", RELEASE_TAG: "incomplete", WRITER_TAG: _writer()}
                )
        return version.name, str(version.version)

    def _move_alias(self, client: Any, versions: dict[str, tuple[str, str]], ranked: list[str]) -> dict[str, str]:
        """Per registered model, the alias goes to the version of the best-ranked variant it holds."""
        moved: dict[str, str] = {}
        for variant in ranked:
            name, number = versions[variant]
            if name not in moved:
                client.set_registered_model_alias(name, self.alias, number)
                moved[name] = number
        return moved

    @staticmethod
    def _remove_abandoned(client: Any, names: set[str]) -> None:
        """Versions a killed run on this host left incomplete (its process is gone) are deleted."""
        host = socket.gethostname()
        for name in names:
            for version in client.search_model_versions(f"name = '{name}' and tags.`{RELEASE_TAG}` = 'incomplete'"):
                writer_host, _, pid = version.tags.get(WRITER_TAG, "").rpartition(":")
                if writer_host == host and pid.isdigit() and not alive(int(pid)):
                    client.delete_model_version(name, version.version)

    def _aliases(self, client: Any, names: set[str]) -> dict[str, str | None]:
        found = {name: client.get_registered_model(name).aliases.get(self.alias) for name in names}
        return {name: None if number is None else str(number) for name, number in found.items()}

    def _roll_back(self, client: Any, created: list[tuple[str, str]], earlier_aliases: dict[str, str | None]) -> None:
        """Best effort: the alias back where it was, then this run's versions deleted."""
        for name, number in earlier_aliases.items():
            try:
                if number is not None:
                    client.set_registered_model_alias(name, self.alias, number)
            except Exception:
                pass
        for name, number in created:
            try:
                client.delete_model_version(name, number)
            except Exception:  # best effort: the original error is the one to report
                pass
