"""``edgeml.compile``: ONNX model in, checked, quantized, converted, evaluated, benchmarked, signed
bundle out. The CLI (``edgeml build``) builds the same :class:`BuildRequest` from its flags.

One build: ``load → check → optimize`` once, then for every candidate (runtime x precision, from
:mod:`edgeml.compiler.plan`) its quantize/convert steps, ``evaluate`` (the fidelity gate) and
``benchmark`` (:class:`edgeml.compiler.candidates.CandidateBuilder`); the fastest candidate that passed
is packaged. The FP32 source model under plain ONNX Runtime is measured in the same run as the
baseline every speed-up is quoted against.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from edgeml.compiler import plan
from edgeml.compiler.candidates import CandidateBuilder
from edgeml.compiler.data import SampleSet, load_samples, random_samples, split
from edgeml.compiler.hostrun import DEFAULT_THREADS, measure
from edgeml.compiler.modelinfo import digest_files, specs_from_json
from edgeml.compiler.passes.base import Artifact, BaselineModel, BuildContext, SourceModel
from edgeml.compiler.passes.load import FORMATS_BY_SUFFIX
from edgeml.compiler.passes.package import resolve_key
from edgeml.compiler.pipeline import StepRecord, run_steps
from edgeml.compiler.progress import ProgressBars
from edgeml.compiler.report import BuildReport, Candidate, choose
from edgeml.compiler.request import QUANTIZED, BuildOptions, BuildRequest, SampleSource
from edgeml.compiler.signature import Signature
from edgeml.compiler.signature import resolve as resolve_signature
from edgeml.errors import CompileError, ConfigError, FidelityError
from edgeml.jsontypes import JSON, as_dict, as_float, as_list
from edgeml.runtimes import BackendOptions
from edgeml.targets import TargetProfile, get_target

if TYPE_CHECKING:
    from edgeml.compiler.frontends import ImportedModel

__all__ = ["BuildRequest", "BuildResult", "compile"]

RANDOM_SAMPLES = 16


@dataclass(frozen=True)
class BuildResult:
    """What :func:`compile` returns: the signed bundle it wrote and the report of every candidate."""

    bundle_path: Path
    report: BuildReport


@dataclass(frozen=True)
class _Resolved:
    """A request checked against its target profile and model file: what will be built, and where to."""

    profile: TargetProfile
    source: Path
    format: str
    pairs: list[tuple[str, str]]          # (runtime, precision) with a plan row, in the profile's order
    skipped: list[str]                     # report notes for pairs without one
    output: Path


def compile(model: str | Path | BuildRequest | object, target: str | Path | TargetProfile | None = None, *,
            example_inputs: object = None, dynamic_shapes: object = None,
            export_options: Mapping[str, JSON] | None = None, **options: Unpack[BuildOptions]) -> BuildResult:
    """Build a signed bundle of ``model`` for ``target`` and return its path and the full report.

    Takes either a :class:`BuildRequest` or the model, the target and a request's other fields as keyword
    arguments (their defaults and meaning: :class:`edgeml.compiler.request.BuildRequest`).
    ``model`` is an ``.onnx``/``.tflite`` file, a ``.pt2`` file, a Hugging Face checkpoint directory, a
    Keras ``.keras``/``.h5`` file, a SavedModel directory, or a ``torch.nn.Module`` /
    ``torch.export.ExportedProgram`` (exported in this process with ``torch.onnx.export(dynamo=True)``,
    traced on ``example_inputs`` with torch.export's ``dynamic_shapes``). ``export_options``: ``opset``
    (default 18, capped at the target's maximum) and ``output_names``.
    Raises :class:`ModelCheckError`, :class:`FidelityError` or another :class:`CompileError`.
    """
    from edgeml.compiler import frontends

    source = model.model if isinstance(model, BuildRequest) else model
    if not frontends.needs_import(source):
        if example_inputs is not None or dynamic_shapes is not None or export_options:
            raise ConfigError("example_inputs, dynamic_shapes and export_options apply to models edgeml "
                              f"exports (torch, Hugging Face, Keras); {source} is built as it is")
        if not isinstance(model, (str, Path, BuildRequest)):
            raise ConfigError(f"cannot build a {type(model).__name__}: give a model path, a BuildRequest, or a "
                              "torch.nn.Module / ExportedProgram (in a process that has imported torch)")
        return _build(_as_request(model, target, options), None)
    placeholder = Path(type(source).__name__) if frontends.is_torch_object(source) else Path(str(source))
    request = _as_request(model if isinstance(model, BuildRequest) else placeholder, target, options)
    profile = _precheck(request)
    opset, output_names = _export_options(export_options, profile)
    with tempfile.TemporaryDirectory(prefix="edgeml-import-") as tmp:
        imported = frontends.import_model(source, Path(tmp), opset=opset, example_inputs=example_inputs,
                                          dynamic_shapes=dynamic_shapes, output_names=output_names,
                                          log=request.log or (lambda line: None), use_cache=request.use_cache)
        request = replace(request, model=imported.path, name=request.name or imported.name)
        if request.tokenizer is None and "tokenizer.json" in imported.assets and _takes_token_ids(imported.path):
            # a checkpoint's tokenizer travels in the bundle, so the device takes text (its config beside it)
            request = replace(request, tokenizer=imported.assets["tokenizer.json"].parent)
        return _build(request, imported)


def _takes_token_ids(model: Path) -> bool:
    """Whether an imported ONNX model has an ``input_ids`` input (the one a tokenizer fills)."""
    if model.suffix != ".onnx":
        return False   # a Keras import is a .tflite model: no text models there
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return any(i.name == "input_ids" for i in graph.input)


def _export_options(options: Mapping[str, JSON] | None, profile: TargetProfile) -> tuple[int, list[str] | None]:
    """(opset, output names) from ``export_options``; unknown keys are an error, not ignored."""
    from edgeml.compiler.frontends import DEFAULT_OPSET

    options = dict(options or {})
    unknown = sorted(set(options) - {"opset", "output_names"})
    if unknown:
        raise ConfigError(f"unknown export option(s) {', '.join(unknown)} (known: opset, output_names)")
    opset = options.get("opset", min(DEFAULT_OPSET, profile.max_opset))
    if not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= profile.max_opset:
        raise ConfigError(f"export option opset must be an integer from 7 to {profile.max_opset} "
                          f"(the maximum of target {profile.id}), got {opset!r}")
    names = options.get("output_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ConfigError(f"export option output_names must be a list of strings, got {names!r}")
    return opset, [str(n) for n in names] if names is not None else None


def _build(request: BuildRequest, imported: ImportedModel | None) -> BuildResult:
    started = time.perf_counter()
    resolved = _resolve(request)
    report = BuildReport(model=str(resolved.source) if imported is None else imported.source_name,
                         target=resolved.profile.id, precision=request.precision, notes=list(resolved.skipped))
    if imported is not None:
        report.data["import"] = imported.provenance
        report.data["import_cached"] = imported.cached
    log_lines: list[str] = []

    def log(message: str) -> None:
        log_lines.append(message)
        if request.log:
            request.log(message)

    with tempfile.TemporaryDirectory(prefix="edgeml-build-") as tmp, \
            ProgressBars(enabled=request.progress is True) as bars:
        ctx = _context(request, resolved, Path(tmp), log, imported)
        ctx.progress = request.progress if callable(request.progress) else bars
        real_data = _prepare(request, resolved, ctx, report)
        builder = CandidateBuilder(request, ctx, Path(tmp))
        for runtime, precision in resolved.pairs:
            report.candidates.append(_candidate(builder, report, Candidate(runtime, precision), real_data))
        chosen = report.chosen = choose(report)
        if chosen is None:
            raise _no_candidate(report)
        package_cfg: dict[str, JSON] = {"name": request.bundle_name(), "version": request.version,
                                        "output": str(resolved.output),
                                        "key": str(request.key) if request.key else None}
        run_steps(builder.built[chosen.key], [("package", package_cfg)], ctx, scratch=Path(tmp), use_cache=False)
    report.bundle = str(resolved.output)
    report.data["log"] = list(log_lines)
    report.total_seconds = time.perf_counter() - started
    return BuildResult(resolved.output, report)


def _as_request(model: str | Path | BuildRequest, target: str | Path | TargetProfile | None,
                options: BuildOptions) -> BuildRequest:
    if isinstance(model, BuildRequest):
        if target is not None or options:
            raise TypeError("compile(request) takes no other arguments: set them on the BuildRequest")
        return model
    if target is None:
        raise TypeError("compile() needs a target (a profile id, a .toml file or a TargetProfile)")
    return BuildRequest(model, target, **options)


def _precheck(request: BuildRequest) -> TargetProfile:
    """The checks that need neither the model file nor any work: run before a front-end's export too."""
    profile = get_target(request.target)
    if request.precision != "auto" and request.precision not in profile.precisions:
        raise ConfigError(f"target {profile.id} does not allow precision {request.precision} "
                          f"(allowed: {', '.join(profile.precisions)})")
    if request.runtime is not None and request.runtime not in profile.runtimes:
        raise ConfigError(f"target {profile.id} has no runtime '{request.runtime}' "
                          f"(it has: {', '.join(profile.runtimes)})")
    request.check_data()
    resolve_key(request.key)  # fail before any work when the signing key is missing
    return profile


def _resolve(request: BuildRequest) -> _Resolved:
    """The checks that need the target profile, the model file or the key store, before any work."""
    profile = _precheck(request)
    source = Path(request.model)
    if not source.is_file():
        raise ConfigError(f"model file {source} does not exist")
    fmt = FORMATS_BY_SUFFIX.get(source.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{source}: edgeml builds from {', '.join(sorted(FORMATS_BY_SUFFIX))} models")
    runtimes = [r for r in profile.runtimes if request.runtime in (None, r)]
    precisions = list(profile.precisions) if request.precision == "auto" else [request.precision]
    pairs, skipped = [], []
    for rt in runtimes:
        for pr in precisions:
            if plan.has_plan(rt, pr):
                pairs.append((rt, pr))
            else:
                skipped.append(f"{rt}/{pr}: not buildable by this edgeml yet (no plan); skipped")
    if not pairs:
        raise CompileError(f"nothing to build: no plan for {request.precision} on {', '.join(runtimes)}")
    return _Resolved(profile, source, fmt, pairs, skipped, request.output_path(profile.id))


def _context(request: BuildRequest, resolved: _Resolved, scratch: Path, log: Callable[[str], None],
             imported: ImportedModel | None) -> BuildContext:
    prep = request.image_preprocess
    source = SourceModel(resolved.source.name, digest_files([resolved.source])) if imported is None else \
        SourceModel(imported.source_name, imported.source_sha256, origin=imported.provenance, assets=imported.assets,
                    example=imported.example)
    return BuildContext(target=resolved.profile, workdir=scratch, log=log, source=source,
                        preprocess=prep.to_json() if prep else None, class_names=tuple(request.class_names or ()),
                        tokenizer=Path(request.tokenizer) if request.tokenizer else None,
                        state=tuple(request.state), framing=request.framing,
                        capture_policy=dict(request.capture_policy) if request.capture_policy else None)


def _prepare(request: BuildRequest, resolved: _Resolved, ctx: BuildContext, report: BuildReport) -> bool:
    """``load → check → optimize`` once, the samples, and the baseline: what every candidate shares.
    Returns whether the samples are real data (not random inputs)."""
    assert ctx.source is not None
    source_art = Artifact(path=resolved.source, format=resolved.format, precision="fp32", digest=ctx.source.sha256)
    records: list[StepRecord] = []
    runtimes = sorted({rt for rt, _ in resolved.pairs})
    scratch, cache = ctx.workdir, request.use_cache
    # the model as given (dims still symbolic): its signature and the user's samples come first, so
    # every dynamic dim is resolved (or the build stops, naming them all) before any heavy work
    as_given = plan.prefix_steps(None, runtimes)[:1]
    load_records: list[StepRecord] = []
    loaded = run_steps(source_art, as_given, ctx, scratch=scratch, use_cache=cache, records=load_records)
    given = _given_samples(loaded, request)
    # without data, an imported model's export example, or sentences through the build's tokenizer, stand
    # in for random inputs (a text model cannot run random token ids)
    example = None if given else _example_samples(loaded, ctx.source.example) or _text_samples(loaded, request)
    sig = _signature(loaded, request, resolved, given or example)
    shapes = sig.static_input_shapes() if resolved.profile.static_shapes and resolved.format == "onnx" \
        else request.input_shapes
    prefix = plan.prefix_steps(shapes, runtimes)
    if prefix[:1] == as_given:   # no shapes to bake in: the model as given is the reference (loaded once)
        ctx.reference = loaded
        records += load_records
    else:
        ctx.reference = run_steps(source_art, prefix[:1], ctx, scratch=scratch, use_cache=cache, records=records)
    ctx.optimized = run_steps(ctx.reference, prefix[1:], ctx, scratch=scratch, use_cache=cache, records=records)
    report.data["prefix_steps"] = [r.to_json() for r in records]
    report.data["dimensions"] = {d: {"value": v, "from": sig.origin[d]} for d, v in sig.dims.items()}
    report.notes += [str(n) for n in as_list(ctx.optimized.metadata.get("check_notes", []))]

    real_data = given is not None
    cal, ev = given or example or split(random_samples(specs_from_json(ctx.reference.metadata["inputs"]),
                                                       RANDOM_SAMPLES, dims=sig.dims))
    report.data.update(calibration_samples=len(cal), evaluation_samples=len(ev), real_data=real_data,
                       data_source=cal.source)
    if request.calibration is None and request.evaluation is not None:
        report.notes.append("no calibration data given: quantizers calibrated on the evaluation samples, "
                            "so the gate is optimistic; pass --calibration with other samples")
    if not real_data:
        used = cal.source if example else "random inputs"
        report.notes.append(f"no calibration data given: {used} were used for the gate, the smoke test "
                            "and reference statistics; quantized candidates need real data (--calibration)")
    ctx.calibration = cal.with_progress("calibrate", ctx.progress)
    ctx.evaluation = ev
    report.baseline = _baseline(resolved.source, ev, request.benchmark_seconds, ctx)
    if report.baseline is not None:
        ctx.baseline = BaselineModel(resolved.source, "onnxruntime")
    return real_data


def _signature(loaded: Artifact, request: BuildRequest, resolved: _Resolved,
               given: tuple[SampleSet, SampleSet] | None) -> Signature:
    feeds = [*given[0], *given[1]] if given else []
    props = {str(k): str(v) for k, v in as_dict(loaded.metadata.get("model_metadata", {})).items()}
    return resolve_signature(specs_from_json(loaded.metadata["inputs"]), samples=feeds,
                             input_shapes=request.input_shapes, metadata=props,
                             model=resolved.source if resolved.format == "onnx" else None)


def _given_samples(loaded: Artifact, request: BuildRequest) -> tuple[SampleSet, SampleSet] | None:
    """(calibration, evaluation) from the user's data, or None when the build has none."""
    specs = specs_from_json(loaded.metadata["inputs"])
    prep = request.image_preprocess
    calibration, evaluation, labels = request.calibration, request.evaluation, request.labels

    def load(source: SampleSource, with_labels: bool) -> SampleSet:
        return load_samples(source, specs, preprocess=prep, labels=labels if with_labels else None)

    if calibration is None and evaluation is None:
        return None
    if evaluation is None:
        assert calibration is not None
        return split(load(calibration, True))
    ev = load(evaluation, True)
    cal = load(calibration, False) if calibration is not None else ev
    return cal, ev


def _example_samples(loaded: Artifact, example: Path | None) -> tuple[SampleSet, SampleSet] | None:
    """(calibration, evaluation) from the exporter's example inputs, when the model was imported with them."""
    if example is None:
        return None
    from edgeml.compiler.frontends.samples import example_samples

    samples = example_samples(example, specs_from_json(loaded.metadata["inputs"]))
    return split(samples) if samples else None


def _text_samples(loaded: Artifact, request: BuildRequest) -> tuple[SampleSet, SampleSet] | None:
    """(calibration, evaluation) of ordinary sentences, when the build ships a tokenizer for every input."""
    if request.tokenizer is None:
        return None
    from edgeml.compiler.textsamples import tokenizer_samples

    samples = tokenizer_samples(request.tokenizer, specs_from_json(loaded.metadata["inputs"]))
    return split(samples) if samples else None


def _baseline(source: Path, samples: SampleSet, seconds: float, ctx: BuildContext) -> dict[str, JSON] | None:
    """The source model, FP32, under plain onnxruntime (default options, 2 threads)."""
    if source.suffix.lower() != ".onnx":
        return None
    progress = ctx.progress
    result = measure(source, "onnxruntime", BackendOptions(num_threads=DEFAULT_THREADS), samples[0], seconds=seconds,
                     progress=lambda done, total: progress("benchmark baseline", done, total))
    result["what"] = "source model, fp32, plain onnxruntime CPU"
    return result


def _candidate(builder: CandidateBuilder, report: BuildReport, cand: Candidate, real_data: bool) -> Candidate:
    if cand.precision in QUANTIZED and not real_data:
        cand.status, cand.reason = "skipped", "needs calibration data"
        return cand
    builder.build(cand)
    if cand.benchmark and cand.benchmark.get("speedup"):
        cand.speedup = as_float(cand.benchmark["speedup"])  # paired with the baseline, same load
    elif report.baseline and cand.p50:
        cand.speedup = round(as_float(report.baseline["p50_ms"]) / cand.p50, 3)
    return cand


def _no_candidate(report: BuildReport) -> CompileError:
    lines = [f"{c.label}: {c.status}: {c.reason}" for c in report.candidates if c.status != "passed"]
    detail = "\n".join(f"  - {line}" for line in lines)
    if any(c.status == "failed" for c in report.candidates):
        return FidelityError(f"no candidate for {report.target} passed the fidelity gate:\n{detail}\n"
                             "Loosen a threshold (--min-agreement, --min-cosine, --max-drop), give better "
                             "calibration data, or use --fallback to keep the most sensitive layers in float")
    return CompileError(f"no candidate for {report.target} could be built:\n{detail}")
