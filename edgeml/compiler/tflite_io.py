"""How a TFLite candidate's inputs/outputs relate to the ONNX model it came from, and the ``.tflite``
source path of the compiler (load and check of a ``.tflite`` input).

onnx2tf converts NCHW graphs to NHWC. edgeml asks it to keep every input in the ONNX layout
(``keep_layout``, the default) so a TFLite candidate takes exactly the feeds the ONNX reference takes;
outputs of rank 3-5 may still come out channels-last. :func:`io_map` records, per tensor, the name on
each side and the permutation between them; :func:`to_tflite_feeds` and :func:`to_onnx_outputs` apply
it. The map is stored in the artifact metadata (``tflite_io``) and so reaches the bundle manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.arrays import Array
from edgeml.compiler.tflite_inspect import (
    TfliteInfo,
    custom_op_problems,
    describe_custom_ops,
    inspect_tflite,
    probe_litert,
)
from edgeml.errors import CompileError

Perm = list[int] | None


def _channels_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def _channels_first(rank: int) -> list[int]:
    return [0, rank - 1, *range(1, rank - 1)]


def _matches(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(not isinstance(x, int) or not isinstance(y, int) or x == y
                                    for x, y in zip(a, b, strict=True))


def _perm_between(onnx_shape: Sequence[Any], tflite_shape: Sequence[Any]) -> tuple[Perm, bool]:
    """(perm, certain): the permutation that turns the ONNX-layout array into the TFLite one."""
    rank = len(onnx_shape)
    if _matches(onnx_shape, tflite_shape):
        # Identity unless the channel-last shape would match too (e.g. 1x8x8x8): then layout is ambiguous.
        certain = rank < 3 or not _matches([onnx_shape[i] for i in _channels_last(rank)], tflite_shape)
        return None, certain
    if rank >= 3:
        perm = _channels_last(rank)
        if _matches([onnx_shape[i] for i in perm], tflite_shape):
            return perm, True
    raise CompileError(f"TFLite tensor shape {list(tflite_shape)} is not the ONNX shape {list(onnx_shape)} "
                       "in NCHW or NHWC order")


def io_map(onnx_inputs: Sequence[TensorSpec], onnx_outputs: Sequence[TensorSpec], info: TfliteInfo) -> dict[str, Any]:
    """{"inputs": [...], "outputs": [...]}: each entry {"onnx", "tflite", "perm", "certain"}.

    Tensors pair up by name (onnx2tf copies the ONNX names with ``-coion``), else by position. ``perm``
    maps an ONNX-layout array to the TFLite layout (``np.transpose(x, perm)``), None for identity.
    """

    def pair(onnx_specs: Sequence[TensorSpec], tfl: Sequence[Any]) -> list[dict[str, Any]]:
        if len(onnx_specs) != len(tfl):
            raise CompileError(f"the TFLite model has {len(tfl)} tensors where the ONNX model has {len(onnx_specs)}")
        by_name = {t.name: t for t in tfl}
        out = []
        for i, spec in enumerate(onnx_specs):
            t = by_name.get(spec.name) or tfl[i]
            perm, certain = _perm_between(spec.shape, t.shape)
            out.append({"onnx": spec.name, "tflite": t.name, "perm": perm, "certain": certain})
        return out

    return {"inputs": pair(onnx_inputs, info.inputs), "outputs": pair(onnx_outputs, info.outputs)}


def is_identity(mapping: Mapping[str, Any]) -> bool:
    """True when a TFLite model is a drop-in replacement: same names, same layouts."""
    return all(e["onnx"] == e["tflite"] and e["perm"] is None
               for e in [*mapping.get("inputs", []), *mapping.get("outputs", [])])


def to_tflite_feeds(feeds: Mapping[str, Array], mapping: Mapping[str, Any]) -> dict[str, Array]:
    out = {}
    for e in mapping["inputs"]:
        x = np.asarray(feeds[e["onnx"]])
        out[e["tflite"]] = np.ascontiguousarray(np.transpose(x, e["perm"])) if e["perm"] else x
    return out


def to_onnx_outputs(outputs: Mapping[str, Array], mapping: Mapping[str, Any]) -> dict[str, Array]:
    out = {}
    for e in mapping["outputs"]:
        y = np.asarray(outputs[e["tflite"]])
        out[e["onnx"]] = np.transpose(y, np.argsort(e["perm"])) if e["perm"] else y
    return out


def tflite_specs(info: TfliteInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def spec(t: Any) -> TensorSpec:
        return TensorSpec(t.name, t.dtype, tuple(t.shape))

    return [spec(t) for t in info.inputs], [spec(t) for t in info.outputs]


def tflite_source_problems(path: Path, runtimes: Sequence[str], target_id: str) -> tuple[list[str], list[str]]:
    """(problems, notes) for a ``.tflite`` model on a target: a runtime that can run it, custom ops.

    Custom ops are checked twice: against what edgeml knows about them (a message that names the runtime
    that can run the op), and by loading the model in the installed LiteRT interpreter (the truth for
    this host). A known-good custom op becomes a note, not a problem.
    """
    info = inspect_tflite(path)
    problems: list[str] = []
    if "litert" not in runtimes:
        problems.append(f"a .tflite model runs only on the 'litert' runtime, which target {target_id} does not "
                        f"list (it has: {', '.join(runtimes)}); build for a target with litert, e.g. arm64-cpu")
        return problems, []
    problems += custom_op_problems(info, "ai-edge-litert")
    notes = describe_custom_ops(info)
    if not problems:
        error = probe_litert(path)
        if error:
            problems.append(f"LiteRT cannot load the model on this host: {error}")
    return problems, notes


def load_tflite(artifact: Any, config: Mapping[str, Any], ctx: Any) -> Any:
    """The ``load`` pass for a ``.tflite`` source: copy it into the work directory and describe it.

    The artifact is already a LiteRT model (``runtime="litert"``); its precision is read from the
    weights (MediaPipe models, for instance, ship FP16 weights).
    """
    import shutil

    from edgeml.compiler.modelinfo import digest_files, specs_to_json
    from edgeml.errors import ConfigError

    if config.get("input_shapes"):
        raise ConfigError("--input-shape applies to ONNX models; a .tflite model's input shapes are fixed")
    info = inspect_tflite(artifact.path)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    dst = ctx.workdir / "model.tflite"
    shutil.copyfile(artifact.path, dst)
    inputs, outputs = tflite_specs(info)
    return artifact.evolve(
        path=dst, format="tflite", precision=info.precision if info.precision != "int8-dynamic" else "int8",
        digest=digest_files([dst]), extra_files=(), runtime="litert",
        metadata={**artifact.metadata, "inputs": specs_to_json(inputs), "outputs": specs_to_json(outputs),
                  "tflite_ops": info.op_counts, "custom_ops": info.custom_ops},
    )
