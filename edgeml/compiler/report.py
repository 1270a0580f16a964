"""The build report: every candidate with its numbers, the one chosen and why.

``--precision auto`` builds each (runtime, precision) the target allows; the report keeps all of them,
including the ones that failed the fidelity gate or errored, so nothing is chosen or dropped silently.
A quantized candidate slower than float on this host gets a note saying so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edgeml.cli_tables import Table, print_table
from edgeml.jsontypes import JSONDict, as_float


@dataclass
class Candidate:
    runtime: str
    precision: str
    status: str = "pending"                    # passed | failed (fidelity) | error | skipped
    reason: str = ""
    fidelity: JSONDict | None = None
    benchmark: JSONDict | None = None
    size_bytes: int | None = None
    build_seconds: float = 0.0
    steps: list[JSONDict] = field(default_factory=list)
    excluded_nodes: list[str] = field(default_factory=list)   # kept in float by --fallback
    speedup: float | None = None               # baseline p50 / this p50 (>1 = faster than the FP32 baseline)
    planned: str = ""                          # the precision of its plan row (``precision`` may become mixed)

    def __post_init__(self) -> None:
        self.planned = self.planned or self.precision

    @property
    def key(self) -> tuple[str, str]:
        """(runtime, planned precision): which plan row this candidate is, stable across a fallback."""
        return (self.runtime, self.planned)

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.precision}"

    @property
    def p50(self) -> float | None:
        return None if not self.benchmark else as_float(self.benchmark["p50_ms"])

    def to_json(self) -> JSONDict:
        return {"runtime": self.runtime, "precision": self.precision, "status": self.status, "reason": self.reason,
                "fidelity": self.fidelity, "benchmark": self.benchmark, "size_bytes": self.size_bytes,
                "build_seconds": round(self.build_seconds, 3), "steps": self.steps,
                "excluded_nodes": self.excluded_nodes, "speedup_vs_baseline": self.speedup}


@dataclass
class BuildReport:
    model: str
    target: str
    precision: str                              # as requested: fp32 | fp16 | int8 | auto
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    why: str = ""
    notes: list[str] = field(default_factory=list)
    baseline: JSONDict | None = None      # the source model, FP32, plain onnxruntime, same host and run
    bundle: str | None = None
    total_seconds: float = 0.0
    data: JSONDict = field(default_factory=dict)

    def to_json(self) -> JSONDict:
        return {"model": self.model, "target": self.target, "precision": self.precision,
                "candidates": [c.to_json() for c in self.candidates],
                "chosen": self.chosen.label if self.chosen else None, "why": self.why, "notes": self.notes,
                "baseline": self.baseline, "bundle": self.bundle, "total_seconds": round(self.total_seconds, 3),
                "data": self.data}

    def table_rows(self) -> list[list[str]]:
        rows = []
        for c in self.candidates:
            fid = c.fidelity or {}
            acc = fid.get("accuracy")
            rows.append([
                ("* " if c is self.chosen else "  ") + c.label, c.status,
                _fmt(c.p50, "{:.3f}"), _fmt(c.benchmark and c.benchmark.get("p99_ms"), "{:.3f}"),
                _fmt(c.speedup, "{:.2f}x"), _fmt(c.size_bytes and c.size_bytes / 1e6, "{:.2f}"),
                _fmt(fid.get("agreement"), "{:.4f}"), _fmt(fid.get("cosine"), "{:.5f}"),
                _fmt(acc, "{:.4f}"), c.reason[:120],
            ])
        return rows

    TABLE_HEADER = ("candidate", "status", "p50 ms", "p99 ms", "vs fp32", "MB", "agreement", "cosine",
                    "accuracy", "note")

    def table(self) -> Table:
        """Every candidate, after the FP32 baseline they are compared with."""
        rows = self.table_rows()
        if self.baseline:
            b = self.baseline
            rows.insert(0, ["  baseline (ort fp32)", "-", f"{b['p50_ms']:.3f}", f"{b['p99_ms']:.3f}", "1.00x",
                            "-", "-", "-", "-", "source model, plain onnxruntime"])
        return Table(f"build {Path(self.model).name} for {self.target} (precision {self.precision})",
                     self.TABLE_HEADER, rows)


def print_report(report: BuildReport, stream: IO[str] | None = None) -> None:
    """The candidates' table, then the choice and its reason, then the notes."""
    out = stream if stream is not None else sys.stdout
    print_table(report.table(), out)
    out.write(f"chosen: {report.chosen.label if report.chosen else '-'} — {report.why}\n")
    for note in report.notes:
        out.write(f"note: {note}\n")


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def choose(report: BuildReport) -> Candidate | None:
    """The fastest candidate that passed the gate; notes for every quantized one slower than float.

    Candidates are compared by their paired speed-up when every one has it (each was timed alternately
    with the same baseline, in one process, so the ratio holds on a busy machine where p50s measured
    minutes apart do not); otherwise by p50.
    """
    passed = [c for c in report.candidates if c.status == "passed" and c.p50 is not None]
    paired = bool(passed) and all(c.speedup for c in passed)

    def cost(c: Candidate) -> float:
        return 1.0 / c.speedup if paired and c.speedup else (c.p50 or 0.0)

    def speed(c: Candidate) -> str:
        return f"{c.speedup:.2f}x the baseline" if paired and c.speedup else f"{c.p50:.3f} ms p50"

    floats = [c for c in passed if c.precision == "fp32"]
    fastest_float = min(floats, key=cost) if floats else None
    base_p50 = as_float(report.baseline["p50_ms"]) if report.baseline else None
    for c in passed:
        if c.precision == "fp32":
            continue
        if fastest_float is not None:
            slower, ref_label, ratio = cost(c) > cost(fastest_float), fastest_float.label, cost(c) / cost(fastest_float)
        elif paired and c.speedup:
            slower, ref_label, ratio = c.speedup < 1.0, "the FP32 baseline", 1.0 / c.speedup
        elif base_p50 is not None and c.p50 is not None:
            slower, ref_label, ratio = c.p50 > base_p50, "the FP32 baseline", c.p50 / base_p50
        else:
            continue
        if slower:
            report.notes.append(f"{c.label} is {ratio:.2f}x slower than {ref_label} on this host"
                                + (": not chosen" if report.precision == "auto" else ""))
    if not passed:
        report.why = "no candidate passed"
        return None
    best = min(passed, key=cost)
    others = sorted((c for c in passed if c is not best), key=cost)
    why = f"{best.label} is the fastest candidate that passed the fidelity gate ({speed(best)}"
    if others:
        why += "; next: " + ", ".join(f"{c.label} {speed(c)}" for c in others)
    why += ")"
    failed = [c for c in report.candidates if c.status in ("failed", "error")]
    if failed:
        why += "; rejected: " + "; ".join(f"{c.label} ({c.status}: {c.reason[:100]})" for c in failed)
    if best.speedup is not None and best.speedup < 1.0:
        report.notes.append(f"the chosen {best.label} runs at {best.speedup:.2f}x the FP32 baseline's speed: "
                            "no candidate beat the source model under plain onnxruntime here")
    report.why = why
    return best
