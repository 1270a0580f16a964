#!/usr/bin/env python3
"""Mutation testing of the safety-critical modules, each against its own fast, in-process test files.

mutmut 3 rewrites every function of a module into variants ("mutants": ``<`` for ``<=``, ``and`` for
``or``, a dropped argument, a changed string) and runs the tests that reach that function against each
one. A mutant the tests do not notice ("survived") is a behaviour no test pins down.

mutmut rewrites the files it mutates and reads its settings from the ``pyproject.toml`` of the
directory it runs in, so every module gets a scratch copy of the sources and tests under
``.mutation/<module>/`` (git-ignored) with a generated ``pyproject.toml``: the working tree is never
touched, and each module runs only its own test files. The agent package is copied to the top level
there (``edgeml_agent/``, as it is installed) so mutmut's module names match the imported ones.

Usage::

    python scripts/mutation.py                    # every module, in order: the table, then each
                                                  # mutant not killed with the change it made
    python scripts/mutation.py verify gates       # only these modules
    python scripts/mutation.py --list             # the modules and their test files
    python scripts/mutation.py --jobs 2           # 2 mutants at a time
    python scripts/mutation.py states --only '*x__judge*'    # one function's mutants
    python scripts/mutation.py machine states --jobs 2 --timeout-multiplier 3   # the update machine (~5 + 15 min
                                                  # on 2 busy cores; a mutant that hangs probation times out sooner)

Score = (killed + timed out) / mutants: a timeout means the mutant hung the tests, which they noticed.
"no tests" mutants (code no selected test reaches) count as not killed and are listed with survivors.
Needs the ``test`` extra (mutmut). Exits 1 when a module scores below ``--fail-under`` (default 80).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutation"
# what each copy holds: repository path -> path in the scratch copy (the agent as it is installed)
LAYOUT = {"edgeml": "edgeml", "agent/edgeml_agent": "edgeml_agent", "tests": "tests"}
DETECTED = {"killed", "timeout"}


@dataclass(frozen=True)
class Target:
    key: str
    source: str                # repository path of the module to mutate
    tests: tuple[str, ...]     # its own fast, in-process test files (no daemons: mutmut forks per mutant)

    @property
    def scratch_source(self) -> str:
        for repo_dir, copy_dir in LAYOUT.items():
            if self.source.startswith(repo_dir + "/"):
                return copy_dir + self.source[len(repo_dir):]
        raise ValueError(f"{self.source} is outside {sorted(LAYOUT)}")


BUNDLE_TESTS = ("tests/bundle/test_verify.py", "tests/bundle/test_verify_refusals.py",
                "tests/bundle/test_archive_members.py")
ARCHIVE_TESTS = (*BUNDLE_TESTS, "tests/security/test_archive_rules.py", "tests/bundle/test_tarstream.py")
# fastest first (see _ORDER_HOOK): the table, the real machine driven in the test's thread, then real agents
MACHINE_TESTS = ("tests/updates/test_table.py", "tests/updates/test_machine_steps.py",
                 "tests/updates/test_states_refusals.py", "tests/updates/test_probation_verdicts.py",
                 "tests/updates/test_machine_inprocess.py")
TARGETS = (
    Target("verify", "edgeml/bundle/verify.py", BUNDLE_TESTS),
    # the archive rules (paths, conflicts, reserved names) and the bounded tar reader under them (issue 15)
    Target("archive", "edgeml/bundle/archive.py", ARCHIVE_TESTS),
    Target("tarstream", "edgeml/bundle/tarstream.py", ARCHIVE_TESTS),
    Target("desired", "edgeml/desired.py",
           ("tests/test_desired_state.py", "tests/security/test_key_role_documents.py")),
    # who may sign a desired state: the fleet key and the successors its rotation statements vouch for
    Target("keyroles", "edgeml/keyroles.py",
           ("tests/security/test_key_role_documents.py", "tests/test_desired_state.py")),
    Target("gates", "edgeml/fleet/rollouts/gates.py",
           ("tests/fleet/rollouts/test_plan_and_gates.py", "tests/fleet/rollouts/test_gate_verdicts.py")),
    # the update state machine: the table and its driver (machine), each state's side effect (states)
    Target("machine", "agent/edgeml_agent/updates/machine.py", MACHINE_TESTS),
    Target("states", "agent/edgeml_agent/updates/states.py", MACHINE_TESTS),
)


@dataclass
class Outcome:
    target: Target
    status: dict[str, str]     # mutant name -> mutmut status
    seconds: float
    error: str = ""

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.status.values())

    @property
    def score(self) -> float:
        total = len(self.status)
        return 100.0 * sum(self.counts[s] for s in DETECTED) / total if total else 0.0

    @property
    def undetected(self) -> list[str]:
        return sorted((n for n, s in self.status.items() if s not in DETECTED), key=_natural)


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def _pytest_settings() -> dict[str, object]:
    """The project's pytest settings (markers, timeout), so the copies run the tests as the suite does."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(data["tool"]["pytest"]["ini_options"])


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _config(target: Target, timeout_multiplier: float) -> str:
    mutmut = {
        "source_paths": ["edgeml", "edgeml_agent"],
        "only_mutate": [target.scratch_source],
        "pytest_add_cli_args_test_selection": list(target.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"],
        "timeout_multiplier": timeout_multiplier,
        # the copy is not a git checkout: nothing to diff against
        "use_git_change_detection": False,
    }
    pytest_ini = {k: v for k, v in _pytest_settings().items() if k != "testpaths"}
    lines = ["[tool.mutmut]", *(f"{k} = {_toml_value(v)}" for k, v in mutmut.items()), "",
             "[tool.pytest.ini_options]", *(f"{k} = {_toml_value(v)}" for k, v in pytest_ini.items())]
    return "\n".join(lines) + "\n"


def prepare(target: Target, timeout_multiplier: float) -> Path:
    """A fresh scratch copy for one module (a previous run's results are discarded)."""
    missing = [t for t in (target.source, *target.tests) if not (ROOT / t).is_file()]
    if missing:
        raise FileNotFoundError(f"{target.key}: missing {', '.join(missing)}")
    work = SCRATCH / target.key
    shutil.rmtree(work, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for repo_dir, copy_dir in LAYOUT.items():
        shutil.copytree(ROOT / repo_dir, work / copy_dir, ignore=ignore)
    (work / "pyproject.toml").write_text(_config(target, timeout_multiplier))
    with open(work / "tests" / "conftest.py", "a") as conftest:
        conftest.write(_ORDER_HOOK.format(files=list(target.tests)))
    return work


# Appended to the copy's tests/conftest.py: mutmut runs a mutant's tests with ``-x`` in no useful order;
# running them in the order the target lists its files (the fastest first) stops a killed mutant early.
_ORDER_HOOK = """

def pytest_collection_modifyitems(items):  # added by scripts/mutation.py
    order = {files!r}
    rank = {{f: i for i, f in enumerate(order)}}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(order)))
"""


def _mutmut(work: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: the tests must import the mutated copy, never the working tree.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MUTMUT_NO_COLOR"] = "1"
    cmd = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    with open(log, "w") as out:
        return subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, check=False)


def run_target(target: Target, jobs: int, timeout_multiplier: float, only: list[str]) -> Outcome:
    started = time.monotonic()
    try:
        work = prepare(target, timeout_multiplier)
    except FileNotFoundError as exc:
        return Outcome(target, {}, 0.0, error=str(exc))
    log = work / "mutmut-run.log"
    run = _mutmut(work, "run", "--max-children", str(jobs), *only, log=log)
    results = _mutmut(work, "results", "--all", "true")
    found = re.findall(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$", results.stdout, flags=re.M)
    status = {name: s for name, s in found if s != "not checked"}     # --only leaves the others unchecked
    seconds = time.monotonic() - started
    error = "" if run.returncode == 0 and status else f"mutmut run failed (exit {run.returncode}), see {log}"
    return Outcome(target, status, seconds, error)


# One process for all diffs (``mutmut show`` per mutant costs a start-up each): the same functions it calls.
_DIFFS = """
import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in json.load(sys.stdin)}))
"""


def mutant_diffs(target: Target, names: list[str]) -> dict[str, list[str]]:
    """Each mutant's change as short ``old -> new`` fragments of the lines it changed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _DIFFS], cwd=SCRATCH / target.key, env=env, input=json.dumps(names),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {n: [f"(no diff: {done.stderr.strip().splitlines()[-1:]})"] for n in names}
    out: dict[str, list[str]] = {}
    for name, diff in json.loads(done.stdout).items():
        lines = diff.splitlines()
        old = [x[1:] for x in lines if x.startswith("-") and not x.startswith("---")]
        new = [x[1:] for x in lines if x.startswith("+") and not x.startswith("+++")]
        out[name] = [_fragment(a, b) for a, b in zip(old, new, strict=False)] or [f"{old} -> {new}"]
    return out


def _fragment(old: str, new: str, context: int = 25) -> str:
    """The part of a line a mutant changed, with a little context on each side."""
    p = 0
    while p < min(len(old), len(new)) and old[p] == new[p]:
        p += 1
    s = 0
    while s < min(len(old), len(new)) - p and old[-1 - s] == new[-1 - s]:
        s += 1
    lo = max(0, p - context)
    return f"{old[lo:len(old) - s + context].strip()}  ->  {new[lo:len(new) - s + context].strip()}"


def print_table(outcomes: list[Outcome]) -> None:
    header = f"{'module':42} {'mutants':>7} {'killed':>6} {'survived':>8} {'timeout':>7} {'no tests':>8} " \
             f"{'score':>6} {'time':>6}"
    print(header)
    print("-" * len(header))
    for o in outcomes:
        c = o.counts
        if o.error:
            print(f"{o.target.source:42} {o.error}")
            continue
        print(f"{o.target.source:42} {len(o.status):7} {c['killed']:6} {c['survived']:8} {c['timeout']:7} "
              f"{c['no tests']:8} {o.score:5.1f}% {o.seconds:5.0f}s")


def print_undetected(outcomes: list[Outcome], diffs: bool) -> None:
    for o in outcomes:
        if o.error or not o.undetected:
            continue
        print(f"\n{o.target.source}: {len(o.undetected)} not killed")
        changes = mutant_diffs(o.target, o.undetected) if diffs else {}
        for name in o.undetected:
            print(f"  {o.status[name]:9} {name.rpartition('.')[2]}")
            for line in changes.get(name, []):
                print(f"            {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module keys (default: all): "
                        + ", ".join(t.key for t in TARGETS))
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--no-diffs", action="store_true", help="list surviving mutants without what they changed")
    parser.add_argument("--list", action="store_true", help="list the modules and their test files")
    parser.add_argument("--fail-under", type=float, default=80.0, help="minimum score in %% (default 80)")
    parser.add_argument("--tests", nargs="+", metavar="FILE",
                        help="run the chosen modules against these test files instead of their own")
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB",
                        help="test only the mutants whose names match, e.g. '*x_judge*' (mutmut's names)")
    parser.add_argument("--timeout-multiplier", type=float, default=10.0,
                        help="a mutant times out after this many times its tests' normal duration")
    args = parser.parse_args(argv)
    by_key = {t.key: t for t in TARGETS}
    unknown = [m for m in args.modules if m not in by_key]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {sorted(by_key)}")
    chosen = [by_key[m] for m in args.modules] or list(TARGETS)
    if args.tests:
        chosen = [Target(t.key, t.source, tuple(args.tests)) for t in chosen]
    if args.list:
        for t in chosen:
            print(f"{t.key:8} {t.source}\n         " + "\n         ".join(t.tests))
        return 0
    outcomes = []
    for target in chosen:
        print(f"== {target.source}  ({', '.join(target.tests)})", flush=True)
        outcomes.append(run_target(target, args.jobs, args.timeout_multiplier, args.only))
    print()
    print_table(outcomes)
    print_undetected(outcomes, diffs=not args.no_diffs)
    print(f"\ntotal time {sum(o.seconds for o in outcomes):.0f} s; scratch copies and logs in {SCRATCH}")
    low = [o for o in outcomes if o.error or o.score < args.fail_under]
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
