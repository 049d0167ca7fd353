"""Mutation testing of the modules that carry quant's promises, with cosmic-ray 8.7.0.

Each module is mutated one change at a time (a comparison flipped, a number changed, a boolean
negated, a loop emptied, an exception swallowed ...) in a scratch copy of the tree, and only the
fast tests relevant to that module are run against each mutant. A mutant the tests do not notice
"survives". The survival rate per module is printed, and every survivor with its diff.

    python tools/mutation.py                       # every module, every mutant (long: see README)
    python tools/mutation.py --module gates --module promotion
    python tools/mutation.py --sample 40 --seed 1  # at most 40 mutants per module, chosen at random
    python tools/mutation.py --source /path/to/an/older/checkout   # "before" figures
    python tools/mutation.py --keep /tmp/mut --module gates --recheck-survivors   # after adding tests

cosmic-ray lives in its own virtualenv (.venv-mutation, created on first use), because its
SQLAlchemy 2.1 is not the one MLflow wants; the tests run with the project's interpreter
(--python, default .venv/bin/python, else the one running this script).

Why cosmic-ray and not mutmut: cosmic-ray writes each mutant to the file on disk and runs any
test command, so the many tests that run `python -m quant.cli` in a subprocess see the mutant;
its session is an SQLite file, so a long run can be stopped and resumed (`--keep DIR`).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MUTATION_VENV = REPO / ".venv-mutation"
COSMIC_RAY = "cosmic-ray==8.7.0"

# module name -> (files mutated, the fast tests that hold its promises; pytest node ids allowed).
# Keep in step with the code's layout. Tests missing from the tree mutated (an older checkout) are left out.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "gates": (["quant/gates.py"], ["tests/test_gate_promises.py", "tests/test_metrics_gates.py"]),
    "metrics": (
        ["quant/metrics/numeric.py", "quant/metrics/ctc.py", "quant/metrics/catalogue.py", "quant/compare.py"],
        [
            "tests/test_metric_promises.py",
            "tests/test_metrics_gates.py",
            "tests/test_catalogue.py",
            "tests/test_seq2seq_compare.py::test_the_same_family_agrees_on_everything",  # the generation metrics' perfect values
        ],
    ),
    "search": (["quant/search.py"], ["tests/test_search_promises.py", "tests/test_static_search.py", "tests/test_search_space.py"]),
    "calibration-cache": (["quant/calibration/ranges.py"], ["tests/test_calibration_cache.py"]),
    "promotion": (
        ["quant/release/folder.py", "quant/release/bundle.py", "quant/release/previous.py", "quant/release/policy.py", "quant/files.py"],
        [
            "tests/test_release_promises.py",
            "tests/test_family_release.py",
            "tests/test_verdicts.py",
            "tests/test_cli.py::test_passing_run_promotes_a_verifiable_release",
        ],
    ),
    "cli-exit-codes": (["quant/cli.py"], ["tests/test_exit_codes.py", "tests/test_cli.py"]),
}

# Operators left out, and why: replacing + by a bit shift or a matrix product multiplies the mutants
# without testing anything the arithmetic replacements among + - * / do not; a removed decorator
# (@dataclass, @property, @click.option) fails at import, which every test notices.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_\w+_(BitAnd|BitOr|BitXor|LShift|RShift|MatMult|Pow|FloorDiv|Mod)$",
    r"core/ReplaceBinaryOperator_(BitAnd|BitOr|BitXor|LShift|RShift|MatMult|Pow|FloorDiv|Mod)_\w+$",
    r"core/RemoveDecorator",
]

COPIED = ["quant", "tests", "recipes", "docs", "pyproject.toml", "README.md"]


def _ensure_cosmic_ray() -> None:
    """Run this script inside the virtualenv that has cosmic-ray (created on first use)."""
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        python = MUTATION_VENV / "bin" / "python"
        if not python.exists():
            print(f"creating {MUTATION_VENV} with {COSMIC_RAY}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(MUTATION_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", COSMIC_RAY], check=True)
        # The interpreter that started the script has the project's dependencies: the tests' default when the
        # checkout has no .venv of its own (a git worktree beside the main checkout).
        os.environ.setdefault("QUANT_MUTATION_PYTHON", sys.executable)
        os.execv(str(python), [str(python), *sys.argv])


def _copy_tree(source: Path, target: Path) -> None:
    for name in COPIED:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, target / name)


def _config(files: list[str], tests: list[str], python: str, timeout: float) -> str:
    command = f"{python} -m pytest -x -q -p no:cacheprovider -p no:randomly {' '.join(tests)}"
    excluded = ", ".join(f"'{pattern}'" for pattern in EXCLUDED_OPERATORS)
    modules = ", ".join(f'"{f}"' for f in files)
    return (
        "[cosmic-ray]\n"
        f"module-path = [{modules}]\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = [{excluded}]\n"
    )


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _sample(session: Path, keep: int, seed: int) -> None:
    """Mark all but `keep` pending mutants, chosen at random with `seed`, as skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        # Sorted by place and operator, not by job id (random): the same tree and seed give the same sample.
        def place(item: object) -> tuple:
            mutation = item.mutations[0]  # type: ignore[attr-defined]
            return (str(mutation.module_path), mutation.start_pos, mutation.operator_name, mutation.occurrence)

        items = sorted(db.pending_work_items, key=place)
        pending = [item.job_id for item in items]
        chosen = set(random.Random(seed).sample(pending, min(keep, len(pending))))
        skipped = [job for job in pending if job not in chosen]
        if skipped:
            db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in the sample"))


def _tally(session: Path) -> dict[str, object]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed = survived = incompetent = skipped = 0
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = db.num_work_items - db.num_results
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                skipped += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                mutation = item.mutations[0]
                survivors.append(f"{mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name}\n{result.diff or ''}")
            elif result.test_outcome == TestOutcome.INCOMPETENT or result.worker_outcome in (WorkerOutcome.EXCEPTION, WorkerOutcome.ABNORMAL):
                incompetent += 1
            else:
                killed += 1
    return {"killed": killed, "survived": survived, "incompetent": incompetent, "skipped": skipped, "pending": pending, "survivors": survivors}


def _retest_survivors(session: Path) -> int:
    """Forget the survivors' results so `exec` runs them again (after tests were added); returns how many."""
    import sqlite3

    with sqlite3.connect(session) as db:
        return db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount


def _survivor_diffs(session: Path) -> list[tuple[str, str]]:
    """(where, diff) of every mutant that survived in a session."""
    import sqlite3

    query = (
        "SELECT m.module_path || ':' || m.start_pos_row || ' ' || m.operator_name, r.diff FROM work_results r "
        "JOIN mutation_specs m USING (job_id) WHERE r.test_outcome = 'SURVIVED' ORDER BY m.module_path, m.start_pos_row"
    )
    with sqlite3.connect(session) as db:
        return [(where, diff) for where, diff in db.execute(query)]


def _apply_diff(diff: str, tree: Path) -> bool:
    """Apply a cosmic-ray mutation diff (one file, unified) by finding each hunk's old lines, with their context,
    once in the file; line numbers may have moved. False when a hunk's lines are not found exactly once."""
    lines = diff.splitlines()
    target = tree / next(line[len("+++ b/") :] for line in lines if line.startswith("+++ b/"))
    text = target.read_text(encoding="utf-8")
    hunks: list[tuple[list[str], list[str]]] = []
    for line in lines[next(i for i, line in enumerate(lines) if line.startswith("+++ ")) + 1 :]:
        if line.startswith("@@"):
            hunks.append(([], []))
        elif hunks and line[:1] in (" ", "-", "+", ""):
            old, new = hunks[-1]
            body = line[1:]
            if line[:1] != "+":
                old.append(body)
            if line[:1] != "-":
                new.append(body)
    for old, new in hunks:
        while old and new and old[-1] == "" and new[-1] == "":  # difflib's context past the file's last newline
            old.pop()
            new.pop()
        # Less context while the lines around the mutant changed elsewhere (as patch's fuzz), but always a unique match.
        for cut in range(len(old)):
            head = min(cut, _common_prefix(old, new))
            tail = min(cut, _common_prefix(old[head:][::-1], new[head:][::-1]))
            before = "\n" + "\n".join(old[head : len(old) - tail]) + "\n"  # whole lines only
            if text.count(before) == 1:
                text = text.replace(before, "\n" + "\n".join(new[head : len(new) - tail]) + "\n")
                break
        else:
            return False
    target.write_text(text, encoding="utf-8")
    return True


def _common_prefix(first: list[str], second: list[str]) -> int:
    return next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))


def recheck_survivors(name: str, session: Path, source: Path, python: str, timeout: float) -> list[tuple[str, bool]]:
    """Apply each survivor's diff to a fresh copy of `source` and run the module's tests: (where, still survives).

    For a tree whose mutated files changed elsewhere since the session (other commits): the diff is placed by its
    context, as `patch` does; a diff that no longer applies is reported, never counted as killed."""
    tests = [t for t in MODULES[name][1] if (source / t.split("::")[0]).exists()]
    outcomes = []
    for where, diff in _survivor_diffs(session):
        scratch = Path(tempfile.mkdtemp(prefix="quant-recheck-"))
        try:
            _copy_tree(source, scratch)
            if not _apply_diff(diff, scratch):
                print(f"{where}: the diff no longer applies (its lines changed); run a new session", file=sys.stderr)
                continue
            command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
            env = {**os.environ, "PYTHONPATH": str(scratch)}
            try:
                done = subprocess.run(command, check=False, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
                survived = done.returncode == 0
            except subprocess.TimeoutExpired:
                survived = False  # a hang counts as killed, as in cosmic-ray
            outcomes.append((where, survived))
            print(f"{name}: {where} {'SURVIVES' if survived else 'killed'}", file=sys.stderr)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return outcomes


def run_module(name: str, work: Path, python: str, timeout: float, sample: int | None, seed: int, log: Path) -> dict[str, object]:
    files, tests = MODULES[name]
    files = [f for f in files if (work / f).exists()]  # an older tree may not have every file yet
    config = work / f"{name}.toml"
    session = work / f"{name}.sqlite"
    config.write_text(_config(files, tests, python, timeout))
    with log.open("a") as out:
        run = lambda *args: subprocess.run(list(args), cwd=work, stdout=out, stderr=subprocess.STDOUT, check=True)
        if not session.exists():
            run(_bin("cosmic-ray"), "init", str(config), str(session))
            run(_bin("cr-filter-operators"), str(session), str(config))
            if sample is not None:
                _sample(session, sample, seed)
        # The tests must pass on the unmutated tree, or every mutant would count as killed.
        run(_bin("cosmic-ray"), "baseline", str(config))
        started = time.monotonic()
        run(_bin("cosmic-ray"), "exec", str(config), str(session))
    tally = _tally(session)
    tally["seconds"] = round(time.monotonic() - started)
    return tally


def _judged(tally: dict[str, object]) -> int:
    return int(tally["killed"]) + int(tally["survived"])  # type: ignore[call-overload]


def _rate(tally: dict[str, object]) -> str:
    return f"{100 * int(tally['survived']) / max(_judged(tally), 1):.1f} %"  # type: ignore[call-overload]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="Module to mutate (repeatable; default: all).")
    parser.add_argument("--source", type=Path, default=REPO, help="Tree to mutate (a copy is made) [default: this checkout].")
    parser.add_argument(
        "--python", default=None, help="Interpreter that runs the tests [default: .venv/bin/python, else the one that started this script]."
    )
    parser.add_argument("--sample", type=int, default=None, help="At most this many mutants per module, chosen at random.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample.")
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds per mutant's test run (a hang counts as killed).")
    parser.add_argument("--keep", type=Path, default=None, help="Work folder kept between runs: an interrupted run resumes.")
    parser.add_argument(
        "--retest-survivors", action="store_true", help="With --keep: copy the tests again from --source and rerun only the mutants that survived."
    )
    parser.add_argument(
        "--recheck-survivors",
        action="store_true",
        help="With --keep: apply each survivor's diff to a fresh copy of --source and run its module's tests (works after the "
        "mutated files changed elsewhere; --retest-survivors does not).",
    )
    args = parser.parse_args()
    _ensure_cosmic_ray()

    python = args.python or str(REPO / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = os.environ.get("QUANT_MUTATION_PYTHON", sys.executable)
    if args.recheck_survivors:
        if args.keep is None:
            sys.exit("--recheck-survivors needs --keep (the folder of the session)")
        for name in args.module or list(MODULES):
            session = args.keep / f"{name}.sqlite"
            if session.exists():
                outcomes = recheck_survivors(name, session, args.source.resolve(), python, args.timeout)
                left = [where for where, survived in outcomes if survived]
                print(f"{name}: {len(left)} of {len(outcomes)} survivor(s) still survive" + "".join(f"\n  {w}" for w in left))
        return 0
    work = args.keep or Path(tempfile.mkdtemp(prefix="quant-mutation-"))
    if not (work / "quant").exists():
        work.mkdir(parents=True, exist_ok=True)
        _copy_tree(args.source.resolve(), work)
    if args.retest_survivors:
        # The whole tree again (tests and code must fit each other), but the mutated files must be the ones the
        # session's mutants were placed in: a survivor is only re-run against the same code and more tests.
        fresh = Path(tempfile.mkdtemp(prefix="quant-mutation-source-"))
        _copy_tree(args.source.resolve(), fresh)
        for name in args.module or list(MODULES):
            changed = [f for f in MODULES[name][0] if (work / f).exists() and (work / f).read_bytes() != (fresh / f).read_bytes()]
            if changed:
                sys.exit(f"{name}: {', '.join(changed)} changed since the session was made; run a new session instead")
        for entry in COPIED:
            shutil.rmtree(work / entry, ignore_errors=True) if (work / entry).is_dir() else (work / entry).unlink(missing_ok=True)
        _copy_tree(fresh, work)
        shutil.rmtree(fresh)
        for session in work.glob("*.sqlite"):
            if session.stem in (args.module or list(MODULES)):
                print(f"{session.stem}: {_retest_survivors(session)} survivor(s) to test again", file=sys.stderr)
    os.environ["PYTHONPATH"] = str(work)  # the tests (and the CLI they start) import the mutated copy
    log = work / "cosmic-ray.log"
    print(f"work folder {work}; cosmic-ray's log: {log}", file=sys.stderr)

    rows = []
    for name in args.module or list(MODULES):
        tests = [t for t in MODULES[name][1] if (work / t.split("::")[0]).exists()]
        if tests != MODULES[name][1]:
            print(f"{name}: {args.source} has no {', '.join(sorted(set(MODULES[name][1]) - set(tests)))}", file=sys.stderr)
        if not tests:
            continue
        MODULES[name] = (MODULES[name][0], tests)
        tally = run_module(name, work, python, args.timeout, args.sample, args.seed, log)
        rows.append((name, tally))
        print(f"{name}: {tally['survived']}/{_judged(tally)} survived ({_rate(tally)}), {tally['seconds']} s", file=sys.stderr)

    print("\n| module | mutants run | killed | survived | survival | incompetent | not run (filtered or not sampled) |")
    print("|---|---|---|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {_judged(t)} | {t['killed']} | {t['survived']} | {_rate(t)} | {t['incompetent']} | {t['skipped']} |")
    for name, t in rows:
        for survivor in t["survivors"]:
            print(f"\n--- survivor in {name}: {survivor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
