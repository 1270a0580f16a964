"""``edgeml.compile``: ONNX model in, checked, quantized, converted, evaluated, benchmarked, signed
bundle out. The CLI (``edgeml build``) only turns its flags into these arguments.

One build: ``load → check → optimize`` once, then for every candidate (runtime x precision, from
:mod:`edgeml.compiler.plan`) its quantize/convert steps, ``evaluate`` (the fidelity gate) and
``benchmark``; the fastest candidate that passed is packaged. The FP32 source model under plain
ONNX Runtime is measured in the same run as the baseline every speed-up is quoted against.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.bundle import parse_semver
from edgeml.compiler import plan
from edgeml.compiler.data import Preprocess, SampleSet, load_samples, random_samples, split
from edgeml.compiler.hostrun import DEFAULT_THREADS, measure
from edgeml.compiler.modelinfo import digest_files, specs_from_json
from edgeml.compiler.passes.base import Artifact, BuildContext
from edgeml.compiler.passes.evaluate import Thresholds
from edgeml.compiler.passes.load import FORMATS_BY_SUFFIX
from edgeml.compiler.passes.package import resolve_key
from edgeml.compiler.pipeline import StepRecord, run_steps
from edgeml.compiler.progress import ProgressBars, ProgressFn
from edgeml.compiler.report import BuildReport, Candidate, choose
from edgeml.errors import CompileError, ConfigError, EdgeMLError, FidelityError, ManifestError
from edgeml.runtimes import BackendOptions
from edgeml.targets import TargetProfile, get_target

PRECISION_CHOICES = ("fp32", "fp16", "int8", "auto")
QUANTIZED = ("int8",)
RANDOM_SAMPLES = 16
FALLBACK_TOP_K = (2, 5, 12)


@dataclass(frozen=True)
class BuildResult:
    bundle_path: Path
    report: BuildReport


def compile(
    model: str | Path,
    target: str | Path | TargetProfile,
    *,
    precision: str = "auto",
    output: str | Path | None = None,
    calibration: Any = None,
    evaluation: Any = None,
    labels: Any = None,
    key: str | Path | None = None,
    name: str | None = None,
    version: str = "1.0.0",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    runtime: str | None = None,
    min_agreement: float | None = 0.97,
    min_cosine: float | None = 0.98,
    min_snr_db: float | None = None,
    max_abs_error: float | None = None,
    max_drop: float | None = 0.02,
    fallback: bool = False,
    exclude_nodes: Sequence[str] = (),
    exclude_op_types: Sequence[str] = (),
    per_channel: bool = False,
    calibration_method: str = "minmax",
    preprocess: Preprocess | Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    benchmark_seconds: float = 2.0,
    use_cache: bool = True,
    progress: bool | ProgressFn = True,
    log: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build a signed bundle of ``model`` for ``target`` and return its path and the full report.

    ``calibration``/``evaluation``: a .npz/.npy path, an image folder, an array, a dict of arrays or an
    iterable of samples (see :mod:`edgeml.compiler.data`). Without ``evaluation``, a quarter of the
    calibration samples is held out for the fidelity gate. ``labels`` belong to the evaluation samples
    (or to the calibration samples when they are split). Threshold arguments set to ``None`` are off.
    Raises :class:`ModelCheckError`, :class:`FidelityError` or another :class:`CompileError`.
    """
    started = time.perf_counter()
    profile = get_target(target)
    source = Path(model)
    if not source.is_file():
        raise ConfigError(f"model file {source} does not exist")
    fmt = FORMATS_BY_SUFFIX.get(source.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{source}: edgeml builds from {', '.join(sorted(FORMATS_BY_SUFFIX))} models")
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"precision '{precision}' must be one of {', '.join(PRECISION_CHOICES)}")
    if precision != "auto" and precision not in profile.precisions:
        raise ConfigError(f"target {profile.id} does not allow precision {precision} "
                          f"(allowed: {', '.join(profile.precisions)})")
    if runtime is not None and runtime not in profile.runtimes:
        raise ConfigError(f"target {profile.id} has no runtime '{runtime}' (it has: {', '.join(profile.runtimes)})")
    if calibration_method not in ("minmax", "entropy", "percentile"):
        raise ConfigError(f"calibration method '{calibration_method}' must be minmax, entropy or percentile")
    if precision in QUANTIZED and calibration is None and evaluation is None:
        raise ConfigError(f"--precision {precision} needs calibration data: pass --calibration PATH "
                          "(.npz/.npy or an image folder)")
    name = name or source.stem
    try:
        parse_semver(version)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from exc
    out_path = Path(output) if output else Path.cwd() / f"{name}-{version}-{profile.id}.edgepkg"
    resolve_key(key)  # fail before any work when the signing key is missing
    prep = Preprocess.from_json(preprocess) if isinstance(preprocess, Mapping) else preprocess
    thresholds = Thresholds(min_agreement, min_cosine, min_snr_db, max_abs_error, max_drop)

    report = BuildReport(model=str(source), target=profile.id, precision=precision)
    runtimes = [r for r in profile.runtimes if runtime in (None, r)]
    precisions = list(profile.precisions) if precision == "auto" else [precision]
    pairs = []
    for rt in runtimes:
        for pr in precisions:
            if plan.has_plan(rt, pr):
                pairs.append((rt, pr))
            else:
                report.notes.append(f"{rt}/{pr}: not buildable by this edgeml yet (no plan); skipped")
    if not pairs:
        raise CompileError(f"nothing to build: no plan for {precision} on {', '.join(runtimes)}")
    checked_runtimes = sorted({rt for rt, _ in pairs})

    log_lines: list[str] = []

    def _log(message: str) -> None:
        log_lines.append(message)
        if log:
            log(message)

    bars = ProgressBars(enabled=progress is True)
    with tempfile.TemporaryDirectory(prefix="edgeml-build-") as tmp, bars as bar_fn:
        progress_fn: ProgressFn = progress if callable(progress) else bar_fn
        scratch = Path(tmp)
        ctx = BuildContext(target=profile, workdir=scratch, progress=progress_fn, log=_log)
        ctx.options.update(source_sha256=digest_files([source]), source_name=source.name,
                           preprocess=prep.to_json() if prep else None, class_names=list(class_names or []))
        source_art = Artifact(path=source, format=fmt, precision="fp32", digest=ctx.options["source_sha256"])
        records: list[StepRecord] = []
        prefix = plan.prefix_steps(input_shapes, checked_runtimes)
        loaded = run_steps(source_art, prefix[:1], ctx, scratch=scratch, use_cache=use_cache, records=records)
        ctx.reference = loaded
        base = run_steps(loaded, prefix[1:], ctx, scratch=scratch, use_cache=use_cache, records=records)
        ctx.options["_optimized"] = base
        report.data["prefix_steps"] = [r.to_json() for r in records]
        report.notes += [str(n) for n in base.metadata.get("check_notes", [])]

        cal, ev, real_data = _samples(loaded, calibration, evaluation, labels, prep)
        report.data.update(calibration_samples=len(cal), evaluation_samples=len(ev), real_data=real_data,
                           data_source=cal.source)
        if calibration is None and evaluation is not None:
            report.notes.append("no calibration data given: quantizers calibrated on the evaluation samples, "
                                "so the gate is optimistic; pass --calibration with other samples")
        if not real_data:
            report.notes.append("no calibration data given: random inputs were used for the gate, the smoke test "
                                "and reference statistics; quantized candidates need real data (--calibration)")
        ctx.calibration = cal.with_progress("calibrate", progress_fn)
        ctx.evaluation = ev
        report.baseline = _baseline(source, ev, benchmark_seconds, progress_fn)
        if report.baseline is not None:
            ctx.options["baseline_model"] = {"path": str(source), "runtime": "onnxruntime"}

        quant_options = {"per_channel": per_channel, "calibration_method": calibration_method}
        artifacts: dict[int, Artifact] = {}
        for rt, pr in pairs:
            cand = Candidate(rt, pr)
            report.candidates.append(cand)
            if pr in QUANTIZED and not real_data:
                cand.status, cand.reason = "skipped", "needs calibration data"
                continue
            art = _build_candidate(cand, ctx, scratch, use_cache, thresholds, fallback, benchmark_seconds,
                                   exclude_nodes, exclude_op_types, quant_options)
            if art is not None:
                artifacts[id(cand)] = art
            if cand.benchmark and cand.benchmark.get("speedup"):
                cand.speedup = float(cand.benchmark["speedup"])  # paired with the baseline, same load
            elif report.baseline and cand.p50:
                cand.speedup = round(report.baseline["p50_ms"] / cand.p50, 3)

        chosen = choose(report)
        report.chosen = chosen
        if chosen is None:
            _raise_no_candidate(report)
        assert chosen is not None
        art = artifacts[id(chosen)]
        package_cfg = {"name": name, "version": version, "output": str(out_path), "key": str(key) if key else None}
        run_steps(art, [("package", package_cfg)], ctx, scratch=scratch, use_cache=False)
    report.bundle = str(out_path)
    report.data["log"] = log_lines
    report.total_seconds = time.perf_counter() - started
    return BuildResult(out_path, report)


def _samples(loaded: Artifact, calibration: Any, evaluation: Any, labels: Any,
             prep: Preprocess | None) -> tuple[SampleSet, SampleSet, bool]:
    specs = specs_from_json(loaded.metadata["inputs"])
    if calibration is None and evaluation is None:
        if labels is not None:
            raise ConfigError("labels were given without samples: pass --eval (or --calibration) data too")
        cal, ev = split(random_samples(specs, RANDOM_SAMPLES))
        return cal, ev, False
    if evaluation is None:
        cal, ev = split(load_samples(calibration, specs, preprocess=prep, labels=labels))
        return cal, ev, True
    ev = load_samples(evaluation, specs, preprocess=prep, labels=labels)
    cal = load_samples(calibration, specs, preprocess=prep) if calibration is not None else ev
    return cal, ev, True


def _baseline(source: Path, samples: SampleSet, seconds: float, progress: ProgressFn) -> dict[str, Any] | None:
    """The source model, FP32, under plain onnxruntime (default options, 2 threads)."""
    if source.suffix.lower() != ".onnx":
        return None
    result = measure(source, "onnxruntime", BackendOptions(num_threads=DEFAULT_THREADS), samples[0], seconds=seconds,
                     progress=lambda done, total: progress("benchmark baseline", done, total))
    result["what"] = "source model, fp32, plain onnxruntime CPU"
    return result


def _build_candidate(cand: Candidate, ctx: BuildContext, scratch: Path, use_cache: bool, thresholds: Thresholds,
                     fallback: bool, bench_seconds: float, exclude_nodes: Sequence[str],
                     exclude_op_types: Sequence[str], quant_options: Mapping[str, Any]) -> Artifact | None:
    """Build, gate and measure one candidate; failures are recorded on it, never raised."""
    started = time.perf_counter()
    records: list[StepRecord] = []
    base = ctx.reference
    assert base is not None
    try:
        steps = plan.candidate_steps(cand.runtime, cand.precision, exclude_nodes=exclude_nodes,
                                     exclude_op_types=exclude_op_types, quant_options=quant_options)
        start = _optimized(ctx, scratch, use_cache)
        trail: list[Artifact] = []
        art = run_steps(start, steps, ctx, scratch=scratch, use_cache=use_cache, records=records, trail=trail)
        art = _ensure_runtime(art, cand.runtime)
        gate = [("evaluate", {**thresholds.to_json(), "enforce": False})]
        art = run_steps(art, gate, ctx, scratch=scratch, use_cache=False, records=records)
        q = plan.quantizer_index(steps)
        if not art.metadata["fidelity"]["passed"] and fallback and q is not None:
            art = _fallback(cand, art, trail[q], steps, q, ctx, scratch, use_cache, records, thresholds,
                            exclude_nodes, exclude_op_types, quant_options)
        cand.fidelity = art.metadata["fidelity"]
        cand.size_bytes = art.size_bytes
        cand.precision = art.precision
        # failed candidates are measured too: the report shows what the gate cost (never chosen)
        art = run_steps(art, [("benchmark", {"seconds": bench_seconds})], ctx, scratch=scratch, use_cache=False,
                        records=records)
        cand.benchmark = art.metadata["benchmark"]
        if not cand.fidelity["passed"]:
            cand.status, cand.reason = "failed", "; ".join(cand.fidelity["failures"])
            return None
        cand.status = "passed"
        return art
    except EdgeMLError as exc:
        cand.status, cand.reason = "error", str(exc).splitlines()[0]
        return None
    except Exception as exc:  # a vendor tool crashing on one candidate must not hide the others' results
        cand.status, cand.reason = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ctx.log(f"{cand.label} crashed: {cand.reason}")
        return None
    finally:
        cand.build_seconds = time.perf_counter() - started
        cand.steps = [r.to_json() for r in records]


def _optimized(ctx: BuildContext, scratch: Path, use_cache: bool) -> Artifact:
    """The optimized FP32 model every candidate starts from (cached after the first candidate)."""
    art = ctx.options.get("_optimized")
    if art is None:
        assert ctx.reference is not None
        art = run_steps(ctx.reference, [("optimize", {})], ctx, scratch=scratch, use_cache=use_cache)
        ctx.options["_optimized"] = art
    assert isinstance(art, Artifact)
    return art


def _ensure_runtime(art: Artifact, runtime: str) -> Artifact:
    if art.runtime is None and runtime == "onnxruntime" and art.format == "onnx":
        return art.evolve(runtime="onnxruntime")
    if art.runtime != runtime:
        raise CompileError(f"the plan for {runtime} produced a model for {art.runtime or art.format}")
    return art


def _fallback(cand: Candidate, failed: Artifact, before_quant: Artifact, steps: list[tuple[str, dict[str, Any]]],
              q: int, ctx: BuildContext, scratch: Path, use_cache: bool, records: list[StepRecord],
              thresholds: Thresholds, exclude_nodes: Sequence[str], exclude_op_types: Sequence[str],
              quant_options: Mapping[str, Any]) -> Artifact:
    """Re-quantize with the most sensitive layers kept in float, widening the set until the gate passes
    (rounds of :data:`FALLBACK_TOP_K` more layers each, re-ranked on the latest candidate)."""
    try:
        from edgeml.compiler.sensitivity import rank_sensitive_nodes
    except ImportError as exc:
        raise CompileError("--fallback needs edgeml.compiler.sensitivity, which this install lacks") from exc
    assert ctx.evaluation is not None
    art = failed
    keep: list[str] = sorted(set(exclude_nodes))
    for top_k in FALLBACK_TOP_K:
        # rank against the latest candidate: once the worst layers are float, others become the worst
        ranked = rank_sensitive_nodes(before_quant.path, art.path, ctx.evaluation, top_k)
        if not set(ranked) - set(keep):
            break  # nothing left that quantization visibly hurts
        keep = sorted({*keep, *ranked})
        new_steps = plan.candidate_steps(cand.runtime, cand.precision, exclude_nodes=keep,
                                         exclude_op_types=exclude_op_types, quant_options=quant_options)
        art = run_steps(before_quant, new_steps[q:], ctx, scratch=scratch, use_cache=use_cache, records=records)
        art = _ensure_runtime(art, cand.runtime)
        gate = [("evaluate", {**thresholds.to_json(), "enforce": False})]
        art = run_steps(art, gate, ctx, scratch=scratch, use_cache=False, records=records)
        cand.excluded_nodes = keep
        ctx.log(f"fallback {cand.label}: kept {len(keep)} node(s) in float -> "
                f"{'passed' if art.metadata['fidelity']['passed'] else 'still failing'}")
        if art.metadata["fidelity"]["passed"]:
            break
    return art


def _raise_no_candidate(report: BuildReport) -> None:
    lines = [f"{c.label}: {c.status}: {c.reason}" for c in report.candidates if c.status != "passed"]
    detail = "\n".join(f"  - {line}" for line in lines)
    if any(c.status == "failed" for c in report.candidates):
        raise FidelityError(f"no candidate for {report.target} passed the fidelity gate:\n{detail}\n"
                            "Loosen a threshold (--min-agreement, --min-cosine, --max-drop), give better calibration "
                            "data, or use --fallback to keep the most sensitive layers in float")
    raise CompileError(f"no candidate for {report.target} could be built:\n{detail}")
