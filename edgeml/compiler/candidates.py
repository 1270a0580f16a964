"""Building one candidate (runtime x precision) of a build: its plan row, the fidelity gate, the
``--fallback`` retries with the most sensitive layers kept in float, and the benchmark.

A :class:`CandidateBuilder` holds what every candidate of one build shares (the request, the build
context with the optimized start model and the samples, the scratch directory and cache setting), so
each step takes only what differs between candidates. Failures are recorded on the candidate, never
raised: one candidate crashing must not hide the others' results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeml.compiler import plan
from edgeml.compiler.passes.base import Artifact, BuildContext
from edgeml.compiler.pipeline import Step, StepRecord, run_steps
from edgeml.compiler.report import Candidate
from edgeml.compiler.request import BuildRequest
from edgeml.errors import CompileError, EdgeMLError
from edgeml.jsontypes import as_dict, as_strs

FALLBACK_TOP_K = (2, 5, 12)   # layers kept in float per fallback round (re-ranked each round)


@dataclass
class _Run:
    """One candidate's build in progress: its report entry and the steps it ran."""

    cand: Candidate
    records: list[StepRecord] = field(default_factory=list)


class CandidateBuilder:
    """Builds, gates and measures the candidates of one build. ``built`` maps each candidate that passed
    the gate, by :attr:`Candidate.key` (runtime, planned precision), to its artifact."""

    def __init__(self, request: BuildRequest, ctx: BuildContext, scratch: Path) -> None:
        self.request = request
        self.ctx = ctx
        self.scratch = scratch
        self.built: dict[tuple[str, str], Artifact] = {}

    def build(self, cand: Candidate) -> None:
        """Fill in ``cand`` (status, fidelity, benchmark, steps); remember its artifact if it passed."""
        started = time.perf_counter()
        run = _Run(cand)
        problems = self._runtime_problems(cand.runtime)
        if problems:  # the check found this runtime cannot read or run the model: it drops out, the rest build
            cand.status, cand.reason = "skipped", "; ".join(problems)
            return
        try:
            art = self._gated(run)
            fidelity = cand.fidelity = dict(as_dict(art.metadata["fidelity"]))
            cand.size_bytes = art.size_bytes
            cand.precision = art.precision
            # failed candidates are measured too: the report shows what the gate cost (never chosen)
            art = self._run(art, [("benchmark", {"seconds": self.request.benchmark_seconds})], run, cache=False)
            cand.benchmark = dict(as_dict(art.metadata["benchmark"]))
            if not _passed(art):
                cand.status, cand.reason = "failed", "; ".join(as_strs(fidelity["failures"]))
                return
            cand.status = "passed"
            self.built[cand.key] = art
        except EdgeMLError as exc:
            cand.status, cand.reason = "error", str(exc).splitlines()[0]
        except Exception as exc:  # a vendor tool crashing on one candidate must not hide the others' results
            first = str(exc).splitlines()[0] if str(exc) else ""
            cand.status, cand.reason = "error", f"{type(exc).__name__}: {first}"
            self.ctx.log(f"{cand.label} crashed: {cand.reason}")
        finally:
            cand.build_seconds = time.perf_counter() - started
            cand.steps = [r.to_json() for r in run.records]

    def _runtime_problems(self, runtime: str) -> list[str]:
        start = self.ctx.optimized
        dropped = as_dict(start.metadata.get("runtime_problems", {})) if start is not None else {}
        return as_strs(dropped.get(runtime, []))

    def _steps(self, cand: Candidate, exclude_nodes: list[str]) -> list[Step]:
        start = self.ctx.optimized
        transformer = start is not None and start.metadata.get("graph_kind") == "transformer"
        # ORT's fused transformer kernels are CPU kernels: a GPU target (TensorRT/CUDA) keeps standard ops
        target = self.ctx.target
        providers = target.options("onnxruntime").providers if "onnxruntime" in target.runtimes else ()
        fuse = not providers or providers[0] == "CPUExecutionProvider"
        return plan.candidate_steps(cand.runtime, cand.planned, exclude_nodes=exclude_nodes,
                                    exclude_op_types=self.request.exclude_op_types,
                                    quant_options=self.request.quant_options, transformer=transformer, fuse=fuse,
                                    weight_compression=self.request.weight_compression)

    def _gated(self, run: _Run) -> Artifact:
        """The candidate through its plan row and the gate (and the fallback when asked for)."""
        start = self.ctx.optimized
        if start is None:
            raise CompileError("candidates start from the optimized model (BuildContext.optimized)")
        steps = self._steps(run.cand, sorted(set(self.request.exclude_nodes)))
        trail: list[Artifact] = []
        art = self._run(start, steps, run, cache=self.request.use_cache, trail=trail)
        art = self._gate(_ensure_runtime(art, run.cand.runtime), run)
        q = plan.quantizer_index(steps)
        if not _passed(art) and self.request.fallback and q is not None:
            art = self._fallback(run, art, trail[q], q)
        return art

    def _gate(self, art: Artifact, run: _Run) -> Artifact:
        return self._run(art, [("evaluate", {**self.request.thresholds.to_json(), "enforce": False})], run,
                         cache=False)

    def _run(self, art: Artifact, steps: list[Step], run: _Run, *, cache: bool,
             trail: list[Artifact] | None = None) -> Artifact:
        return run_steps(art, steps, self.ctx, scratch=self.scratch, use_cache=cache, records=run.records,
                         trail=trail)

    def _fallback(self, run: _Run, failed: Artifact, before_quant: Artifact, q: int) -> Artifact:
        """Re-quantize with the most sensitive layers kept in float, widening the set until the gate passes
        (rounds of :data:`FALLBACK_TOP_K` more layers each, re-ranked on the latest candidate)."""
        try:
            from edgeml.compiler.sensitivity import rank_sensitive_nodes
        except ImportError as exc:
            raise CompileError("--fallback needs edgeml.compiler.sensitivity, which this install lacks") from exc
        if self.ctx.evaluation is None:
            raise CompileError("--fallback needs evaluation samples (BuildContext.evaluation)")
        cand, art = run.cand, failed
        keep: list[str] = sorted(set(self.request.exclude_nodes))
        for top_k in FALLBACK_TOP_K:
            # rank against the latest candidate: once the worst layers are float, others become the worst
            ranked = rank_sensitive_nodes(before_quant.path, art.path, self.ctx.evaluation, top_k)
            if not set(ranked) - set(keep):
                break  # nothing left that quantization visibly hurts
            keep = sorted({*keep, *ranked})
            art = self._run(before_quant, self._steps(cand, keep)[q:], run, cache=self.request.use_cache)
            art = self._gate(_ensure_runtime(art, cand.runtime), run)
            cand.excluded_nodes = keep
            passed = _passed(art)
            self.ctx.log(f"fallback {cand.label}: kept {len(keep)} node(s) in float -> "
                         f"{'passed' if passed else 'still failing'}")
            if passed:
                break
        return art


def _passed(art: Artifact) -> bool:
    """Whether ``art`` passed the fidelity gate (the evaluate pass wrote its report into the metadata)."""
    return as_dict(art.metadata["fidelity"])["passed"] is True


def _ensure_runtime(art: Artifact, runtime: str) -> Artifact:
    if art.runtime is None and runtime == "onnxruntime" and art.format == "onnx":
        return art.evolve(runtime="onnxruntime")
    if art.runtime != runtime:
        raise CompileError(f"the plan for {runtime} produced a model for {art.runtime or art.format}")
    return art
