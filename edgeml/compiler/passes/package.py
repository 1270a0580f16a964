"""``package``: write the signed bundle (format v1, see DESIGN.md) for the chosen candidate.

Manifest keys written here: ``name``, ``version``, ``target`` (the profile's constraints,
:meth:`TargetProfile.to_json`), ``runtime`` and ``runtime_preferences`` (providers or devices in the
profile's order), ``precision``, ``model``, ``inputs``/``outputs`` (named dynamic dims), optional
``preprocess`` and ``labels``, ``fidelity``, ``benchmark`` (with host info), ``reference_stats``
(schema in :mod:`edgeml.compiler.stats`), ``provenance`` (source sha256, edgeml version, each pass
with its config hash) and ``smoke`` (``smoke/input.npz``, ``smoke/expected.npz``, ``rtol``, ``atol``:
the agent runs the input after install and compares). ``format``, ``files`` and ``created`` are
added by :func:`edgeml.bundle.pack_bundle`, which also signs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeml._version import __version__
from edgeml.bundle import SigningKey, TensorSpec, load_signing_key, pack_bundle
from edgeml.bundle.pack import state_entry, tokenizer_entry
from edgeml.compiler.data import SampleSet
from edgeml.compiler.hostrun import DEFAULT_THREADS, host_options, run_outputs
from edgeml.compiler.modelinfo import specs_from_json
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.stats import reference_stats
from edgeml.errors import CompileError, KeyStoreError
from edgeml.jsontypes import JSON, JSONDict, as_dict, as_list
from edgeml.paths import keys_dir
from edgeml.runtimes import BackendOptions, open_model

# how far a device's smoke output may be from the build host's, by precision (relative to max |value|)
SMOKE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1, "mixed": 1e-1}
MAX_STATS_SAMPLES = 128  # outputs of every sample are held in memory (a 640x640 map is 1.6 MB each)
_OPTIONS = ("name", "version", "output", "key", "compression")


def config_hash(config: JSON) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_key(key: str | Path | None) -> SigningKey:
    """The signing key: a name in the key directory or a path; default 'default'."""
    name = key or "default"
    path = Path(name)
    if not path.exists() and not path.suffix and not (keys_dir() / f"{name}.key").exists():
        raise KeyStoreError(f"no signing key '{name}' in {keys_dir()}: create one with `edgeml keys generate"
                            f"{'' if name == 'default' else ' --name ' + str(name)}` or pass --key PATH")
    return load_signing_key(name)


def _merge_specs(actual: list[TensorSpec], declared: list[TensorSpec]) -> list[JSON]:
    """Names and dtypes as the candidate's runtime reports them; dynamic dims keep the source's names."""
    by_name = {s.name: s for s in declared}
    out: list[JSON] = []
    for spec in actual:
        src = by_name.get(spec.name)
        shape = list(spec.shape)
        if src is not None and len(src.shape) == len(shape):
            shape = [s if isinstance(a, str) else a for a, s in zip(shape, src.shape, strict=True)]
        out.append({"name": spec.name, "dtype": spec.dtype, "shape": shape})
    return out


def _runtime_preferences(ctx: BuildContext, runtime: str) -> list[str]:
    opts = ctx.target.options(runtime)
    if runtime == "openvino":
        return [d for d in (opts.device, *opts.fallback_devices) if d] or ["CPU"]
    if runtime == "onnxruntime":
        return list(opts.providers) or ["CPUExecutionProvider"]
    return []


def _stats_samples(ctx: BuildContext) -> SampleSet:
    samples = ctx.calibration if ctx.calibration is not None and len(ctx.calibration) else ctx.evaluation
    if samples is None or not len(samples):
        raise CompileError("package needs sample inputs for the smoke test and reference statistics")
    return samples.subset(list(range(min(len(samples), MAX_STATS_SAMPLES))))


class PackagePass(Pass):
    """Config: ``name``, ``version``, ``output`` (path of the .edgepkg), ``key`` (name or path),
    ``compression`` ("zstd" | None)."""

    name = "package"
    cacheable: ClassVar[bool] = False

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        self.check_options(_OPTIONS)
        output = Path(str(self.config["output"]))
        key = resolve_key(_str_or_none(self.config.get("key")))
        runtime = artifact.runtime or "onnxruntime"
        options, _ = host_options(ctx.target, runtime)
        files: dict[str, str | Path] = {f"model/{p.name}": p for p in artifact.files}
        smoke = _smoke(artifact, ctx, runtime, options, files)
        with open_model(artifact.path, runtime, options) as backend:
            actual_in, actual_out = backend.inputs, backend.outputs
        declared_in = specs_from_json(artifact.metadata.get("inputs", []))
        declared_out = specs_from_json(artifact.metadata.get("outputs", []))
        manifest: JSONDict = {
            "name": self.config["name"], "version": self.config["version"],
            "target": ctx.target.to_json(), "runtime": runtime,
            "runtime_preferences": _runtime_preferences(ctx, runtime),
            "precision": artifact.precision, "model": f"model/{artifact.path.name}",
            "inputs": _merge_specs(actual_in, declared_in), "outputs": _merge_specs(actual_out, declared_out),
            "fidelity": artifact.metadata.get("fidelity"), "benchmark": artifact.metadata.get("benchmark"),
            "reference_stats": _reference_stats(ctx),
            "provenance": _provenance(artifact, ctx),
            "smoke": smoke,
        }
        if ctx.preprocess:
            manifest["preprocess"] = ctx.preprocess
        _prepost(ctx, manifest, files, actual_in, actual_out)
        if ctx.capture_policy:
            manifest["capture"] = ctx.capture_policy
        if ctx.class_names:
            (ctx.workdir / "labels.txt").write_text("\n".join(ctx.class_names) + "\n", encoding="utf-8")
            files["labels.txt"] = ctx.workdir / "labels.txt"
            manifest["labels"] = {"file": "labels.txt", "count": len(ctx.class_names)}
        compression = _str_or_none(self.config.get("compression", "zstd"))
        signed = pack_bundle(output, manifest, files, key, compression=compression)
        ctx.log(f"package: wrote {output} ({output.stat().st_size} bytes, key {key.key_id})")
        return artifact.evolve(metadata={**artifact.metadata, "bundle": str(output), "key_id": key.key_id,
                                         "manifest": signed.raw})


def _prepost(ctx: BuildContext, manifest: JSONDict, files: dict[str, str | Path], inputs: list[TensorSpec],
             outputs: list[TensorSpec]) -> None:
    """State pairs, tokenizer and audio framing (:mod:`edgeml.bundle.prepost`): signed like every file."""
    state = state_entry(ctx.state, inputs, outputs)
    if state:
        manifest["state"] = list(state)
        ctx.log(f"package: stateful model, state {', '.join(p['input'] + '<-' + p['output'] for p in state)}")
    if ctx.tokenizer is not None:
        entry, path = tokenizer_entry(ctx.tokenizer, inputs)
        manifest["tokenizer"] = entry
        files[str(entry["file"])] = path
    if ctx.framing:
        if ctx.preprocess:
            raise CompileError("a bundle has either image preprocessing or audio framing, not both")
        manifest["preprocess"] = ctx.framing


def _smoke(artifact: Artifact, ctx: BuildContext, runtime: str, options: BackendOptions,
           files: dict[str, str | Path]) -> JSONDict:
    """The smoke sample: the first held-out input and what this candidate answers on this host, with the
    tolerance a device's answer must meet. Adds its two files to ``files``."""
    workdir = ctx.workdir
    smoke_source = ctx.evaluation if ctx.evaluation is not None and len(ctx.evaluation) else _stats_samples(ctx)
    smoke_in = smoke_source[0]
    expected = run_outputs(artifact.path, runtime, options, SampleSet([smoke_in]))
    np.savez(workdir / "smoke-input.npz", **smoke_in)  # type: ignore[arg-type]
    np.savez(workdir / "smoke-expected.npz", **expected)  # type: ignore[arg-type]
    files["smoke/input.npz"] = workdir / "smoke-input.npz"
    files["smoke/expected.npz"] = workdir / "smoke-expected.npz"
    scale = max((float(np.max(np.abs(v))) for v in expected.values() if v.size and v.dtype.kind == "f"), default=1.0)
    tol = SMOKE_TOLERANCE.get(artifact.precision, 1e-1)
    return {"input": "smoke/input.npz", "expected": "smoke/expected.npz", "rtol": tol,
            "atol": round(tol * scale + 1e-5, 8)}


def _reference_stats(ctx: BuildContext) -> JSONDict:
    """Statistics of the calibration data and of the FP32 reference model's outputs on it (for drift)."""
    stats_set = _stats_samples(ctx)
    if ctx.reference is None:
        raise CompileError("package needs the reference model (BuildContext.reference)")
    ref_opts = BackendOptions(providers=("CPUExecutionProvider",), num_threads=DEFAULT_THREADS)
    ref_runtime = "litert" if ctx.reference.format == "tflite" else "onnxruntime"  # a .tflite source
    ref_out = run_outputs(ctx.reference.path, ref_runtime, ref_opts, stats_set)
    return reference_stats(stats_set.stacked(), ref_out, len(stats_set))


def _provenance(artifact: Artifact, ctx: BuildContext) -> JSONDict:
    provenance: JSONDict = {
        "source_sha256": ctx.source.sha256 if ctx.source else None,
        "source_name": ctx.source.name if ctx.source else None,
        "edgeml_version": __version__,
        "passes": [{"name": p["name"], "config": p["config"], "config_hash": config_hash(p["config"])}
                   for p in map(as_dict, as_list(artifact.metadata.get("passes", [])))],
    }
    if ctx.source is not None and ctx.source.origin is not None:
        # a front-end's export: framework, versions, exporter options and its check against the framework
        provenance["import"] = ctx.source.origin
    return provenance


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
