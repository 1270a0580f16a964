"""``benchmark``: latency (p50/p90/p99), throughput, peak memory (resident-set growth of a fresh
process while the model loads and warms up) and file size of a candidate on this host, through the
same runtime backend a device uses. When the build names a baseline (``ctx.baseline``: the source model
under plain onnxruntime), its runs alternate with the
candidate's in the same process and ``speedup`` compares the two under identical load.
Never cached: timings belong to this run on this machine.
"""

from __future__ import annotations

from typing import ClassVar

from edgeml.compiler.hostrun import DEFAULT_THREADS, host_info, host_options, measure
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.request import DEFAULT_BENCH_SECONDS
from edgeml.errors import CompileError
from edgeml.jsontypes import JSON, as_float
from edgeml.runtimes import BackendOptions

_OPTIONS: dict[str, JSON] = {"seconds": DEFAULT_BENCH_SECONDS, "warmup": 5, "max_iters": 1000,
                             "threads": DEFAULT_THREADS}


class BenchmarkPass(Pass):
    """Config: ``seconds`` (time budget, default 2), ``warmup`` (5), ``max_iters`` (1000), ``threads`` (2)."""

    name = "benchmark"
    cacheable: ClassVar[bool] = False

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        self.check_options(_OPTIONS)
        cfg = {**_OPTIONS, **self.config}
        threads = int(as_float(cfg["threads"]))
        samples = ctx.evaluation if ctx.evaluation is not None and len(ctx.evaluation) else ctx.calibration
        if samples is None or not len(samples):
            raise CompileError("benchmark needs at least one sample input (BuildContext.evaluation)")
        runtime = artifact.runtime or "onnxruntime"
        options, notes = host_options(ctx.target, runtime, threads)
        label = f"benchmark {runtime}/{artifact.precision}"
        base = ctx.baseline
        baseline = (base.path, base.runtime, BackendOptions(num_threads=threads)) if base else None
        result = measure(
            artifact.path, runtime, options, samples[0], seconds=as_float(cfg["seconds"]),
            warmup=int(as_float(cfg["warmup"])),
            max_iters=int(as_float(cfg["max_iters"])), baseline=baseline,
            progress=lambda done, total: ctx.progress(label, done, total),
        )
        result.update(size_bytes=artifact.size_bytes, host=host_info(), notes=notes)
        ctx.log(f"{label}: p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms")
        return artifact.evolve(metadata={**artifact.metadata, "benchmark": result})
