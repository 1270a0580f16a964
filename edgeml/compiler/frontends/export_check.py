"""Check an export against the framework itself: the exported model, run by edgeml's own runtime on the
exporter's example inputs, must give the outputs the framework gave (torch eager, Keras). A mismatch is
an exporter bug that no fidelity gate later could tell from quantization error, so it fails the build
here, with the numbers; the figures go into the bundle's provenance either way.
"""

from __future__ import annotations

import numpy as np

from edgeml.arrays import Array
from edgeml.compiler.frontends.imported import ImportedModel
from edgeml.errors import ConversionError, MissingExtraError
from edgeml.jsontypes import JSON, JSONDict

MIN_EXPORT_COSINE = 0.999          # FP32 exports land at >= 0.99999; below this something was mistranslated


def _cosine(a: Array, b: Array) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    if denom == 0.0:
        return 1.0 if float(np.abs(x - y).max(initial=0.0)) == 0.0 else 0.0
    return float(np.dot(x, y) / denom)


def _load_example(imported: ImportedModel) -> tuple[dict[str, Array], dict[str, Array]]:
    assert imported.example is not None
    with np.load(imported.example, allow_pickle=False) as data:
        feeds = {k[3:]: data[k] for k in data.files if k.startswith("in/")}
        expected = {k[4:]: data[k] for k in data.files if k.startswith("out/")}
    return feeds, expected


def check_export(imported: ImportedModel, min_cosine: float = MIN_EXPORT_COSINE) -> JSONDict:
    """Per output: cosine and max abs error of the exported model against the framework's outputs."""
    from edgeml.compiler.data import SampleSet
    from edgeml.compiler.hostrun import DEFAULT_THREADS, run_outputs
    from edgeml.runtimes import BackendOptions

    if imported.example is None:
        return {"checked": False, "reason": "the exporter had no example inputs to compare on"}
    feeds, expected = _load_example(imported)
    runtime = "litert" if imported.path.suffix.lower() == ".tflite" else "onnxruntime"
    try:
        got = run_outputs(imported.path, runtime, BackendOptions(num_threads=DEFAULT_THREADS), SampleSet([feeds]))
    except MissingExtraError as exc:
        return {"checked": False, "reason": str(exc)}
    outputs: dict[str, JSON] = {}
    worst = 1.0
    for name, want in expected.items():
        if name not in got:
            raise ConversionError(f"the exported model has no output '{name}' (it has {', '.join(got)})")
        have = got[name].reshape(want.shape) if got[name].size == want.size else got[name]
        if have.shape != want.shape:
            raise ConversionError(f"export check: output '{name}' has shape {list(have.shape)}, the framework "
                                  f"gave {list(want.shape)}")
        cos = _cosine(have, want)
        worst = min(worst, cos)
        outputs[name] = {"cosine": round(cos, 7), "max_abs_error": float(np.abs(have - want).max(initial=0.0))}
    if worst < min_cosine:
        hint = "try another opset (--opset N, export_options={'opset': N}) or " if runtime == "onnxruntime" else ""
        raise ConversionError(f"the exported model disagrees with the framework on its own example input "
                              f"(cosine {worst:.6f} < {min_cosine}): {outputs}. This is an exporter problem; "
                              f"{hint}report the model")
    return {"checked": True, "runtime": runtime, "samples": 1, "min_cosine": round(worst, 7), "outputs": outputs}
