"""What a build report must say about speed, computed from its own numbers (an oracle for the choice)."""

from __future__ import annotations

from collections.abc import Iterable

from edgeml.compiler.report import BuildReport, Candidate


def slower_than_fastest_float(passed: Iterable[Candidate]) -> set[str]:
    """Labels of the passed non-FP32 candidates with a lower paired speed-up than the fastest FP32 one."""
    passed = list(passed)
    fastest_float = max(c.speedup or 0.0 for c in passed if c.precision == "fp32")
    return {c.label for c in passed if c.precision != "fp32" and (c.speedup or 0.0) < fastest_float}


def called_out_as_slower(report: BuildReport) -> set[str]:
    """Labels the report's notes call slower than float and not chosen."""
    return {n.split(" is ", 1)[0] for n in report.notes if " slower than " in n and n.endswith(": not chosen")}
