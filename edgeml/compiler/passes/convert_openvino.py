"""ONNX → OpenVINO IR (``.xml`` + ``.bin``) with ``openvino.convert_model`` and ``openvino.save_model``.

Targets that need static shapes (the NPU compiler) get every dynamic input fixed here, either from the
``input_shapes`` option (the CLI's ``--input-shape``) or because the model is static already; a model
that stays dynamic fails the build naming the inputs, instead of failing later on the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_ort import validate_config
from edgeml.errors import ConfigError, ConversionError
from edgeml.jsontypes import JSON
from edgeml.runtimes.openvino_backend import import_openvino

if TYPE_CHECKING:
    from openvino import Model


def input_shapes_of(model: Model) -> dict[str, str]:
    """{input name: shape as OpenVINO prints it, '?' for dynamic dims} of an ``openvino.Model``."""
    return {port.get_any_name(): str(port.get_partial_shape()) for port in model.inputs}


def dynamic_inputs(model: Model) -> list[str]:
    return [port.get_any_name() for port in model.inputs if port.get_partial_shape().is_dynamic]


def _check_shapes(pass_name: str, shapes: JSON) -> dict[str, list[int]]:
    if not isinstance(shapes, Mapping):
        raise ConfigError(f"pass '{pass_name}': input_shapes must map input names to lists of ints, got {shapes!r}")
    out: dict[str, list[int]] = {}
    for name, dims in shapes.items():
        if not isinstance(dims, list | tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                         for d in dims):
            raise ConfigError(
                f"pass '{pass_name}': input_shapes['{name}'] must be a list of positive ints "
                f"(e.g. --input-shape {name}=1x3x224x224), got {dims!r}"
            )
        out[str(name)] = [int(d) for d in dims]
    return out


def reshape_inputs(model: Model, shapes: Mapping[str, list[int]], source: str) -> None:
    """Fix the named inputs of an ``openvino.Model`` to static shapes, in place."""
    ov = import_openvino()
    known = {name for port in model.inputs for name in port.get_names()}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise ConversionError(
            f"--input-shape names input(s) {', '.join(unknown)} that {source} does not have; "
            f"its inputs: {', '.join(input_shapes_of(model))}"
        )
    try:
        model.reshape({name: ov.PartialShape(dims) for name, dims in shapes.items()})
    except Exception as exc:  # rank mismatch or a shape the graph cannot propagate
        wanted = ", ".join(f"{n}={'x'.join(map(str, d))}" for n, d in shapes.items())
        raise ConversionError(
            f"cannot reshape {source} to {wanted} (model inputs: {input_shapes_of(model)}): {exc}"
        ) from exc


class ConvertOpenVino(Pass):
    """ONNX model → OpenVINO IR for the ``openvino`` runtime (intel-npu, x86-cpu's OpenVINO path)."""

    name = "convert_openvino"
    defaults: Mapping[str, JSON] = {"compress_to_fp16": False, "input_shapes": None}

    def __init__(self, **config: JSON) -> None:
        merged = validate_config(self.name, config, self.defaults)
        if merged["input_shapes"] is not None:
            merged["input_shapes"] = _check_shapes(self.name, merged["input_shapes"])
        super().__init__(**merged)

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format != "onnx":
            raise ConversionError(f"convert_openvino needs an ONNX model, got {artifact.format} ({artifact.path})")
        ov = import_openvino()
        try:
            model = ov.convert_model(str(artifact.path))
        except Exception as exc:
            raise ConversionError(f"OpenVINO cannot convert {artifact.path.name}: {exc}") from exc
        shapes_before = input_shapes_of(model)
        shapes = self.opt_shapes("input_shapes")
        if shapes:
            reshape_inputs(model, shapes, artifact.path.name)
        still_dynamic = dynamic_inputs(model)
        if still_dynamic and (ctx.target.static_shapes or shapes):
            why = f"target {ctx.target.id} needs static shapes" if ctx.target.static_shapes else "shapes were fixed"
            raise ConversionError(
                f"{why} but input(s) {', '.join(still_dynamic)} of {artifact.path.name} are still dynamic "
                f"({', '.join(f'{n}: {input_shapes_of(model)[n]}' for n in still_dynamic)}); give each a "
                f"static shape with --input-shape NAME=1x3x224x224 (input_shapes option)"
            )

        ctx.workdir.mkdir(parents=True, exist_ok=True)
        xml = ctx.workdir / f"{artifact.path.stem}.xml"
        compress = self.opt_bool("compress_to_fp16")
        try:
            ov.save_model(model, str(xml), compress_to_fp16=compress)
        except Exception as exc:
            raise ConversionError(f"OpenVINO cannot save the IR of {artifact.path.name}: {exc}") from exc
        bin_file = xml.with_suffix(".bin")
        ctx.log(f"convert_openvino: {artifact.path.name} -> {xml.name} (inputs {input_shapes_of(model)})")
        metadata = {
            **artifact.metadata,
            "converter": f"openvino {ov.get_version()}",
            "input_shapes_before": shapes_before,
            "input_shapes": input_shapes_of(model),
            "reshaped": bool(shapes),
            "compress_to_fp16": compress,
        }
        precision = "fp16" if compress and artifact.precision == "fp32" else artifact.precision
        return artifact.evolve(
            path=xml, format="openvino", precision=precision, digest=digest_files([xml, bin_file]),
            extra_files=(bin_file,), runtime="openvino", metadata=metadata,
        )
