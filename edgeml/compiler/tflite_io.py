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
from typing import TYPE_CHECKING

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.tflite_inspect import (
    TensorInfo,
    TfliteInfo,
    custom_op_problems,
    describe_custom_ops,
    inspect_tflite,
    probe_litert,
)
from edgeml.errors import CompileError
from edgeml.jsontypes import JSON, JSONDict, as_dict, as_int, as_list, as_str

if TYPE_CHECKING:
    from edgeml.compiler.passes.base import Artifact, BuildContext

Perm = list[int] | None


def _channels_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def _channels_first(rank: int) -> list[int]:
    return [0, rank - 1, *range(1, rank - 1)]


Dim = int | str                     # a static dimension or a named dynamic one


def _matches(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    return len(a) == len(b) and all(not isinstance(x, int) or not isinstance(y, int) or x == y
                                    for x, y in zip(a, b, strict=True))


def _perm_between(onnx_shape: Sequence[Dim], tflite_shape: Sequence[Dim]) -> tuple[Perm, bool]:
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


def io_map(onnx_inputs: Sequence[TensorSpec], onnx_outputs: Sequence[TensorSpec], info: TfliteInfo) -> JSONDict:
    """{"inputs": [...], "outputs": [...]}: each entry {"onnx", "tflite", "perm", "certain"}.

    Tensors pair up by name (onnx2tf copies the ONNX names with ``-coion``), else by position. ``perm``
    maps an ONNX-layout array to the TFLite layout (``np.transpose(x, perm)``), None for identity.
    """

    def pair(onnx_specs: Sequence[TensorSpec], tfl: Sequence[TensorInfo]) -> list[JSON]:
        if len(onnx_specs) != len(tfl):
            raise CompileError(f"the TFLite model has {len(tfl)} tensors where the ONNX model has {len(onnx_specs)}")
        by_name = {t.name: t for t in tfl}
        out: list[JSON] = []
        for i, spec in enumerate(onnx_specs):
            t = by_name.get(spec.name) or tfl[i]
            perm, certain = _perm_between(spec.shape, t.shape)
            out.append({"onnx": spec.name, "tflite": t.name, "perm": perm, "certain": certain})
        return out

    return {"inputs": pair(onnx_inputs, info.inputs), "outputs": pair(onnx_outputs, info.outputs)}


def io_entries(mapping: Mapping[str, JSON], side: str) -> list[tuple[str, str, Perm]]:
    """(onnx name, tflite name, perm) of each input or output (``side``) of an :func:`io_map`."""
    out: list[tuple[str, str, Perm]] = []
    for raw in as_list(mapping.get(side, [])):
        e = as_dict(raw)
        perm = e["perm"]
        dims = None if perm is None else [as_int(i) for i in as_list(perm)]
        out.append((as_str(e["onnx"]), as_str(e["tflite"]), dims))
    return out


def is_identity(mapping: Mapping[str, JSON]) -> bool:
    """True when a TFLite model is a drop-in replacement: same names, same layouts."""
    return all(onnx == tflite and perm is None
               for onnx, tflite, perm in [*io_entries(mapping, "inputs"), *io_entries(mapping, "outputs")])


def to_tflite_feeds(feeds: Mapping[str, Array], mapping: Mapping[str, JSON]) -> dict[str, Array]:
    out = {}
    for onnx, tflite, perm in io_entries(mapping, "inputs"):
        x = np.asarray(feeds[onnx])
        out[tflite] = np.ascontiguousarray(np.transpose(x, perm)) if perm else x
    return out


def to_onnx_outputs(outputs: Mapping[str, Array], mapping: Mapping[str, JSON]) -> dict[str, Array]:
    out = {}
    for onnx, tflite, perm in io_entries(mapping, "outputs"):
        y = np.asarray(outputs[tflite])
        out[onnx] = np.transpose(y, np.argsort(perm)) if perm else y
    return out


def tflite_specs(info: TfliteInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def spec(t: TensorInfo) -> TensorSpec:
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


def load_tflite(artifact: Artifact, config: Mapping[str, JSON], ctx: BuildContext) -> Artifact:
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
