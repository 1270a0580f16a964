"""``load``: read the source model into the work directory and describe its inputs and outputs.

Table-driven by file suffix (:data:`LOADERS`) so another format is one function and one row.
``input_shapes`` (``{"input": [1, 3, 224, 224]}``) fixes dynamic dimensions here, before ``check``,
because some targets (NPU, TensorRT engines) need static shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from edgeml.compiler.modelinfo import digest_files, is_named_dim, load_onnx, onnx_specs, save_onnx, specs_to_json
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.tflite_io import load_tflite
from edgeml.errors import CompileError, ConfigError
from edgeml.jsontypes import JSON, as_dict, as_int, as_list

if TYPE_CHECKING:
    from onnx import ModelProto


def _fix_input_shapes(model: ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Set the named inputs' dimensions; output dims that used the same symbols become static too."""
    inputs = {v.name: v for v in model.graph.input}
    unknown = [n for n in input_shapes if n not in inputs]
    if unknown:
        raise ConfigError(f"--input-shape names {', '.join(unknown)}, but the model's inputs are "
                          f"{', '.join(inputs)}")
    fixed_symbols: dict[str, int] = {}
    for name, shape in input_shapes.items():
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ConfigError(f"--input-shape {name}={'x'.join(map(str, shape))} has {len(shape)} dimensions; "
                              f"the input has {len(dims)}")
        for d, value in zip(dims, shape, strict=True):
            if value <= 0:
                raise ConfigError(f"--input-shape {name}: dimensions must be positive, got {value}")
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != value:
                raise ConfigError(f"--input-shape {name}: dimension {d.dim_value} of the model is static; "
                                  f"it cannot become {value}")
            if is_named_dim(d.dim_param):
                fixed_symbols[d.dim_param] = int(value)
            d.ClearField("dim_param")
            d.dim_value = int(value)
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if d.dim_param in fixed_symbols:
                value = fixed_symbols[d.dim_param]
                d.ClearField("dim_param")
                d.dim_value = value
    # intermediate shapes recorded with the old symbols would now contradict the inputs
    del model.graph.value_info[:]


def _load_onnx(artifact: Artifact, config: Mapping[str, JSON], ctx: BuildContext) -> Artifact:
    model = load_onnx(artifact.path)
    shapes = config.get("input_shapes")
    if shapes:
        _fix_input_shapes(model, {name: [as_int(d) for d in as_list(dims)] for name, dims in as_dict(shapes).items()})
    files = save_onnx(model, ctx.workdir / "model.onnx")
    inputs, outputs = onnx_specs(model)
    return Artifact(
        path=files[0], format="onnx", precision=artifact.precision, digest=digest_files(files),
        extra_files=tuple(files[1:]), runtime=None,
        metadata={**artifact.metadata, "inputs": specs_to_json(inputs), "outputs": specs_to_json(outputs),
                  "model_metadata": _metadata_props(model)},
    )


def _metadata_props(model: ModelProto) -> dict[str, JSON]:
    """The model's own ``metadata_props`` (exporters record e.g. ``imgsz``), short values only."""
    return {p.key: p.value for p in list(model.metadata_props)[:MAX_METADATA_PROPS] if len(p.value) <= 4096}


MAX_METADATA_PROPS = 64

# file suffix -> the artifact format it loads as
FORMATS_BY_SUFFIX: dict[str, str] = {".onnx": "onnx", ".tflite": "tflite"}

# file suffix -> loader
LOADERS: dict[str, Callable[[Artifact, Mapping[str, JSON], BuildContext], Artifact]] = {
    ".onnx": _load_onnx,
    ".tflite": load_tflite,  # edgeml/compiler/tflite_io.py
}


class LoadPass(Pass):
    name = "load"
    uses_calibration: ClassVar[bool] = False

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        self.check_options(("input_shapes",))
        loader = LOADERS.get(artifact.path.suffix.lower())
        if loader is None:
            raise CompileError(f"{artifact.path}: cannot load '{artifact.path.suffix}' models; "
                               f"supported: {', '.join(sorted(LOADERS))}")
        return loader(artifact, self.config, ctx)
