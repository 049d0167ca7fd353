"""The `quantize` command. The only place that maps errors to exit codes (0 pass, 1 gate failed, 2 bad input, 3 bug)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from quant.errors import WRITE_ERRNOS, InputError, OutputError, QuantError
from quant.progress import log_stderr
from quant.recipe.docs import recipe_json_schema
from quant.recipe.loader import load_recipe

if TYPE_CHECKING:
    from quant.executor import Executor

EXIT_PASS, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _fail(message: str, code: int) -> None:
    click.echo(f"quantize: error: {message}", err=True)
    sys.exit(code)


def _internal_error(error: BaseException, verbose: bool = False) -> None:
    handle, path = tempfile.mkstemp(prefix="quant-traceback-", suffix=".txt")
    text = "".join(traceback.format_exception(error))
    with os.fdopen(handle, "w") as out:
        out.write(text)
    if verbose:
        print(text, file=sys.stderr, end="")
    _fail(f"internal error ({type(error).__name__}: {str(error)[:200]}); traceback written to {path}", EXIT_INTERNAL)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--recipe", "recipes", multiple=True, metavar="RECIPE", help="Recipe YAML (repeatable). A bare name like edge-cpu.yaml is looked up in recipes/."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder for built variants, results.json and summary.md [default: runs/<recipe name>].",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Cache for prepared models, calibration ranges and FP32 outputs [default: <out>/cache].",
)
@click.option("--only", multiple=True, metavar="VARIANT", help="Build and judge only this variant (repeatable).")
@click.option("--validate", is_flag=True, help="Check the recipe, model and data sources; build nothing, write nothing.")
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write results.json here (with several recipes: one JSON list)."
)
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), default=None, help="Write JUnit XML here: one test case per variant x gate.")
@click.option(
    "--release-version",
    "release_version",
    default=None,
    metavar="vN",
    help="Release version to create [default: the next free vN]. Never overwrites.",
)
@click.option("--allow-extends-from", multiple=True, type=click.Path(path_type=Path), help="Extra folder that 'extends:' may read from.")
@click.option("--quiet", is_flag=True, help="No progress or log lines on stderr; errors and the summary only.")
@click.option(
    "--verbose", is_flag=True, help="Also log every gate (observed value, threshold, verdict) and each build's figures; tracebacks on stderr."
)
@click.option(
    "--allow-tuning-on-evaluation",
    is_flag=True,
    help="Let a fallback search (or inc's tuning) choose on the evaluation set when the recipe has no 'tuning' set. "
    "Its passes are then optimistic; results.json, the summary and the verdict say so.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run up to N builds and evaluations (of different variants and recipes) at once, each in its own process. "
    "Latency is still measured one variant at a time with nothing else running; models and verdicts are the same as with 1. "
    "A build uses the recipe's bench.threads onnxruntime threads; a reference or evaluation its share of the cores (at most as many).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine (--jobs); ray: each build and evaluation as a Ray task on a cluster (pip install 'quant[ray]'). "
    "With ray, --out and --cache must be on storage every node mounts at the same path.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="With --executor ray: the cluster to join (e.g. 10.0.0.5:6379) [default: $RAY_ADDRESS, else a local cluster on this machine].",
)
@click.option(
    "--ray-shard-samples",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    metavar="N",
    help="With --executor ray: an evaluation of more than N samples runs in shards of N through Ray Data, on a pool of actors "
    "(a smaller one: a few plain tasks per CPU).",
)
@click.pass_context
def main(
    ctx: click.Context,
    recipes: tuple[str, ...],
    out_dir: Path | None,
    cache_dir: Path | None,
    only: tuple[str, ...],
    validate: bool,
    json_path: Path | None,
    junit_path: Path | None,
    release_version: str | None,
    allow_extends_from: tuple[Path, ...],
    quiet: bool,
    verbose: bool,
    allow_tuning_on_evaluation: bool,
    jobs: int,
    executor: str,
    ray_address: str | None,
    ray_shard_samples: int,
) -> None:
    """Quantize an FP32 ONNX model into the variants a recipe names, judge each against FP32
    with accuracy and speed gates, and promote the passing ones into a release folder.

    Exit codes: 0 the promotion policy was met; 1 a gate failed (the summary says which);
    2 bad input (recipe, model, data; nothing released); 3 internal error; 4 inconclusive (only
    variants whose latency interval still straddled its threshold kept the policy from being met).
    """
    if ctx.invoked_subcommand is not None:
        return
    if not recipes:
        click.echo(ctx.get_help())
        _fail("--recipe is required", EXIT_BAD_INPUT)
    if quiet and verbose:
        _fail("--quiet and --verbose contradict each other; choose one", EXIT_BAD_INPUT)
    if executor == "ray" and jobs != 1:
        _fail("--jobs is for --executor local; a Ray cluster runs as many units as its nodes hold", EXIT_BAD_INPUT)
    if ray_address and executor != "ray":
        _fail("--ray-address needs --executor ray", EXIT_BAD_INPUT)
    try:
        call = Invocation(
            recipes,
            out_dir,
            cache_dir,
            only,
            validate,
            json_path,
            junit_path,
            release_version,
            list(allow_extends_from),
            quiet,
            verbose,
            allow_tuning_on_evaluation,
            jobs,
            executor,
            ray_address,
            ray_shard_samples,
        )
        code = _run_all(call)
    except InputError as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except QuantError as error:
        _fail(str(error), EXIT_INTERNAL)
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            _internal_error(error)
        where = error.filename or out_dir or "the run folder"
        field = next(
            (
                flag
                for flag, path in (("--json", json_path), ("--junit", junit_path), ("--cache", cache_dir))
                if path and error.filename and Path(error.filename).is_relative_to(path)
            ),
            "--out",
        )
        _fail(str(OutputError(f"cannot write: {error.strerror}", file=str(where), field=field)), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was released", 130)
    except Exception as error:  # a bug: say where the traceback went
        _internal_error(error, verbose)
    sys.exit(code)


@dataclass(frozen=True)
class Invocation:
    """The command line, as typed values (no defaults here: the options' defaults are the only ones)."""

    recipes: tuple[str, ...]
    out_dir: Path | None
    cache_dir: Path | None
    only: tuple[str, ...]
    validate: bool
    json_path: Path | None
    junit_path: Path | None
    release_version: str | None
    allow_extends_from: list[Path]
    quiet: bool
    verbose: bool
    allow_tuning_on_evaluation: bool
    jobs: int
    executor: str
    ray_address: str | None
    ray_shard_samples: int


def _run_all(call: Invocation) -> int:
    loaded = [load_recipe(r, allow_extends_from=call.allow_extends_from) for r in call.recipes]  # all recipes checked before any work
    if not call.validate:
        for path, flag in ((call.json_path, "--json"), (call.junit_path, "--junit")):
            _check_report_path(path, flag)

    from quant.executor import using
    from quant.recipe.loader import LoadedRecipe
    from quant.release.policy import worst_exit_code
    from quant.report.files import write_json, write_junit, write_run_reports
    from quant.runner import RunOptions, RunResult, run

    log = (lambda message: None) if call.quiet else log_stderr

    def run_one(recipe: LoadedRecipe) -> RunResult:
        run_dir = (call.out_dir / recipe.recipe.name if len(loaded) > 1 else call.out_dir) if call.out_dir else Path("runs") / recipe.recipe.name
        cache_dir = call.cache_dir or run_dir / "cache"
        if call.executor == "ray":  # a Ray worker's working directory is not this one: it is handed absolute paths
            run_dir, cache_dir = run_dir.absolute(), cache_dir.absolute()
        options = RunOptions(
            out_dir=run_dir,
            cache_dir=cache_dir,
            only=call.only,
            validate_only=call.validate,
            version=call.release_version,
            quiet=call.quiet,
            log=log,
            detail=log_stderr if call.verbose else (lambda message: None),
            allow_tuning_on_evaluation=call.allow_tuning_on_evaluation,
        )
        result = run(recipe, options)
        if call.validate:
            click.echo(f"{recipe.path}: {result.verdict}")
            return result
        assert result.results is not None  # a run that is not --validate always has its results
        write_run_reports(run_dir, result.results, result.summary)
        return result

    # Recipes are independent: with --jobs > 1 they run side by side, sharing the executor's jobs.
    with using(_executor(call)) as executor:
        results = executor.each([partial(run_one, recipe) for recipe in loaded])
    for result in results:  # in the order of the recipes, however they finished
        if result.results is not None:
            click.echo(result.summary)
    documents = [r.results for r in results if r.results is not None]
    worst = worst_exit_code(r.exit_code for r in results if r.results is not None)
    if call.junit_path and documents:
        write_junit(call.junit_path, documents)
    if call.json_path and documents:
        write_json(call.json_path, documents)
    return worst


def _executor(call: Invocation) -> Executor:
    from quant.executor import executor_for

    if call.executor == "ray" and not call.validate:  # --validate builds nothing: no cluster to join
        from quant.ray_executor import RayExecutor

        return RayExecutor(call.ray_address, shard_samples=call.ray_shard_samples)
    return executor_for(call.jobs)


def _check_report_path(path: Path | None, flag: str) -> None:
    """A report file that cannot be written is bad input found before the run, not after the release."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create its folder: {error.strerror}", file=str(error.filename or path.parent), field=flag) from None
    if path.is_dir():
        raise OutputError("is a folder, not a file", file=str(path), field=flag)


@main.command("schema")
@click.option("--markdown", is_flag=True, help="Print the Markdown field reference (docs/recipes.md) instead.")
def schema_command(markdown: bool) -> None:
    """Print the recipe's JSON Schema (recipes/recipe.schema.json)."""
    if markdown:
        from quant.recipe.docs import recipes_markdown

        click.echo(recipes_markdown(), nl=False)
        return
    click.echo(schema_text(), nl=False)


def schema_text() -> str:
    return json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    main()
