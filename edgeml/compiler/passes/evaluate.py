"""``evaluate``: the fidelity gate. Reference (the FP32 source model under ONNX Runtime) against the
candidate (under the runtime it was built for) on held-out samples.

Per output: ``cosine`` similarity, ``snr_db`` (signal-to-noise of the difference, capped at 120 dB for
identical outputs), ``max_abs_error``, and ``agreement`` — the fraction of positions whose arg-max over
the last axis matches (class outputs, see :func:`is_class_output`: ``[N, C]`` scores, or probability
distributions along the last axis of a higher-rank output) or whose value matches exactly (integer
outputs such as predicted labels); other outputs (maps, boxes) have no agreement, only the other
metrics. With labels, task ``accuracy`` of both models and the ``accuracy_drop``. A candidate fails
when any output misses a threshold; the failure lists every miss with the numbers.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from edgeml.arrays import Array
from edgeml.compiler.data import SampleSet
from edgeml.compiler.hostrun import DEFAULT_THREADS, host_options, run_outputs
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.request import Thresholds
from edgeml.errors import CompileError, ConfigError, FidelityError
from edgeml.jsontypes import JSONDict, as_strs
from edgeml.runtimes import BackendOptions

SNR_CAP_DB = 120.0


# outputs whose name says they are vectors, not class scores: judged by cosine/SNR, never by an arg-max
# (a [N, 384] sentence embedding looks exactly like [N, classes] logits otherwise)
EMBEDDING_NAMES = ("embed", "hidden", "pool", "feature", "vector", "encod", "state", "latent")


# a transformer's [N, C] float output with at least this many columns that is no probability distribution
# is a pooled embedding (MiniLM: 384, BERT: 768); text classifiers have a handful of labels
EMBEDDING_MIN_WIDTH = 128


def output_kind(name: str, ref: Array, transformer: bool = False) -> str:
    """``labels`` (integer outputs), ``class`` (scores over classes), ``embedding`` (named like a vector:
    :data:`EMBEDDING_NAMES`, or a wide non-probability output of a transformer) or ``values`` (maps, boxes,
    regressions)."""
    if ref.dtype.kind in "iub":
        return "labels"
    if any(word in name.lower() for word in EMBEDDING_NAMES):
        return "embedding"
    if transformer and ref.ndim == 2 and ref.shape[-1] >= EMBEDDING_MIN_WIDTH and not _distributions(ref):
        return "embedding"
    return "class" if is_class_output(ref) else "values"


def output_metrics(ref: Array, cand: Array, name: str = "", transformer: bool = False) -> dict[str, float | str | None]:
    """Per-output numbers: top-1 ``agreement`` only for ``class`` and ``labels`` outputs (see :func:`output_kind`);
    ``cosine``, ``snr_db`` and ``max_abs_error`` for every float output."""
    if ref.shape != cand.shape:
        raise CompileError(f"candidate output shape {list(cand.shape)} differs from the reference {list(ref.shape)}")
    kind = output_kind(name, ref, transformer)
    out: dict[str, float | str | None] = {"kind": kind, "agreement": None, "cosine": None, "snr_db": None,
                                          "max_abs_error": None}
    if ref.dtype.kind in "iub":
        out["agreement"] = float(np.mean(ref == cand)) if ref.size else 1.0
        return out
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    diff = r - c
    out["max_abs_error"] = float(np.max(np.abs(diff))) if r.size else 0.0
    norm = float(np.linalg.norm(r) * np.linalg.norm(c))
    out["cosine"] = float(np.dot(r, c) / norm) if norm > 0 else (1.0 if not np.any(diff) else 0.0)
    noise = float(np.sum(diff**2))
    signal = float(np.sum(r**2))
    out["snr_db"] = SNR_CAP_DB if noise == 0 else min(SNR_CAP_DB, 10 * math.log10(max(signal, 1e-30) / noise))
    if kind == "class":
        out["agreement"] = float(np.mean(ref.argmax(-1) == cand.argmax(-1)))
    return out


def _distributions(ref: Array) -> bool:
    sums = ref.reshape(-1, ref.shape[-1]).astype(np.float64).sum(-1)
    return bool(ref.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3))


def is_class_output(ref: Array) -> bool:
    """Scores over classes along the last axis: ``[N, C]`` (logits or probabilities), or a higher-rank
    output whose last axis holds probability distributions (``[N, T, C]`` sequence recognisers). The
    arg-max of anything else (a detector's probability map, box coordinates) is noise, not a class."""
    if ref.ndim < 2 or ref.shape[-1] < 2 or ref.dtype.kind != "f":
        return False
    if ref.ndim == 2:
        return True
    return _distributions(ref)


def predictions(outputs: dict[str, Array]) -> Array | None:
    """The predicted class per sample: an integer [N] output (labels), else arg-max of a [N, C] output."""
    for value in outputs.values():
        if value.dtype.kind in "iu" and value.ndim == 1:
            return value
    for value in outputs.values():
        if value.dtype.kind == "f" and value.ndim == 2 and value.shape[1] > 1:
            return np.asarray(value.argmax(1))
    return None


def compare(reference: dict[str, Array], candidate: dict[str, Array], labels: Array | None,
            thresholds: Thresholds, transformer: bool = False) -> JSONDict:
    """The fidelity report: per-output metrics, accuracy, pass/fail and every failure spelled out.
    ``transformer``: the model is transformer-like (its wide [N, C] outputs are embeddings)."""
    per_output = {name: output_metrics(ref, candidate[name], name, transformer)
                  for name, ref in reference.items() if name in candidate}
    failures = []
    t = thresholds
    for name, m in per_output.items():
        checks = (("agreement", t.min_agreement, ">="), ("cosine", t.min_cosine, ">="),
                  ("snr_db", t.min_snr_db, ">="), ("max_abs_error", t.max_abs_error, "<="))
        for metric, limit, op in checks:
            value = m[metric]
            if limit is None or not isinstance(value, float):
                continue
            if (op == ">=" and value < limit) or (op == "<=" and value > limit):
                failures.append(f"output '{name}': {metric} {value:.4f} (needs {op} {limit})")
    report: JSONDict = {"outputs": per_output, "samples": None, "thresholds": thresholds.to_json()}
    if labels is not None:
        ref_pred, cand_pred = predictions(reference), predictions(candidate)
        if ref_pred is None or cand_pred is None:
            raise ConfigError("labels were given but no output looks like class predictions "
                              "(an integer [N] output or a float [N, classes] output)")
        ref_acc = float(np.mean(ref_pred.reshape(-1) == labels.reshape(-1)))
        cand_acc = float(np.mean(cand_pred.reshape(-1) == labels.reshape(-1)))
        report.update(reference_accuracy=ref_acc, accuracy=cand_acc, accuracy_drop=ref_acc - cand_acc)
        if t.max_drop is not None and ref_acc - cand_acc > t.max_drop:
            failures.append(f"accuracy {cand_acc:.4f} vs reference {ref_acc:.4f}: drop {ref_acc - cand_acc:.4f} "
                            f"(needs <= {t.max_drop})")
    agreements = [m["agreement"] for m in per_output.values() if isinstance(m["agreement"], float)]
    cosines = [m["cosine"] for m in per_output.values() if isinstance(m["cosine"], float)]
    report["agreement"] = min(agreements) if agreements else None
    report["cosine"] = min(cosines) if cosines else None
    report["passed"] = not failures
    report["failures"] = failures
    return report


def reference_outputs(ctx: BuildContext, samples: SampleSet) -> dict[str, Array]:
    """The FP32 source model's outputs under ONNX Runtime CPU, computed once per build."""
    cached = ctx.reference_outputs
    if cached is None:
        if ctx.reference is None:
            raise CompileError("evaluate needs the reference model (BuildContext.reference)")
        options = BackendOptions(providers=("CPUExecutionProvider",), num_threads=DEFAULT_THREADS)
        ref_runtime = "litert" if ctx.reference.format == "tflite" else "onnxruntime"  # a .tflite source
        cached = run_outputs(ctx.reference.path, ref_runtime, options, samples)
        ctx.reference_outputs = cached
    return dict(cached)


class EvaluatePass(Pass):
    """Config: the :class:`Thresholds` fields, plus ``enforce`` (default true: raise FidelityError)."""

    name = "evaluate"
    cacheable: ClassVar[bool] = False

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        config = dict(self.config)
        enforce = bool(config.pop("enforce", True))
        try:
            thresholds = Thresholds.from_json(config)
        except ConfigError as exc:
            known = ", ".join(Thresholds.__dataclass_fields__)
            raise ConfigError(f"pass 'evaluate': {exc}; known options: {known}, enforce") from exc
        samples: SampleSet | None = ctx.evaluation
        if samples is None or not len(samples):
            raise CompileError("evaluate needs held-out samples (BuildContext.evaluation)")
        reference = reference_outputs(ctx, samples)
        runtime = artifact.runtime or "onnxruntime"
        options, notes = host_options(ctx.target, runtime)
        candidate = run_outputs(artifact.path, runtime, options, samples)
        report = compare(reference, candidate, samples.labels, thresholds,
                         transformer=artifact.metadata.get("graph_kind") == "transformer")
        report["samples"] = len(samples)
        report["measured_on"] = {"runtime": runtime, "providers": list(options.providers), "device": options.device,
                                 "notes": notes}
        ctx.log(f"evaluate {runtime}/{artifact.precision}: agreement={report['agreement']} cosine={report['cosine']}"
                f" {'passed' if report['passed'] else 'FAILED'}")
        if enforce and not report["passed"]:
            raise FidelityError(f"{runtime}/{artifact.precision} fails the fidelity gate: "
                                + "; ".join(as_strs(report["failures"])))
        return artifact.evolve(metadata={**artifact.metadata, "fidelity": report})
