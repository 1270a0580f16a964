"""``compress_weights``: NNCF weight-only compression of an OpenVINO model (INT8 or INT4 weights).

Only the weights of MatMul/embedding layers are stored compressed (``nncf.compress_weights``); activations
stay float and the CPU plugin decompresses on the fly. No calibration data is needed. It is how transformer
models get small (INT4: ~1/7 of FP32) where full INT8 quantization would hurt them; whether it is also
faster depends on the model and the CPU, which the benchmark measures like for any other candidate.
"""

from __future__ import annotations

from typing import ClassVar

from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_nncf import import_nncf
from edgeml.compiler.passes.quantize_ort import validate_config
from edgeml.errors import ConfigError, QuantizationError
from edgeml.jsontypes import JSON
from edgeml.runtimes.openvino_backend import import_openvino

# edgeml mode -> NNCF CompressWeightsMode member
MODES = {"int8": "INT8_ASYM", "int4": "INT4_SYM"}


class CompressWeights(Pass):
    """Config: ``mode`` ("int8" | "int4"), ``group_size`` (INT4 only, default 128; -1 = per channel),
    ``ratio`` (INT4 only: the share of layers in INT4, the rest INT8; default 1.0)."""

    name = "compress_weights"
    uses_calibration: ClassVar[bool] = False
    defaults: ClassVar[dict[str, JSON]] = {"mode": "int8", "group_size": 128, "ratio": 1.0}

    def __init__(self, **config: JSON) -> None:
        merged = validate_config(self.name, config, self.defaults)
        if merged["mode"] not in MODES:
            raise ConfigError(f"pass '{self.name}': mode must be one of {', '.join(MODES)}, got {merged['mode']!r}")
        super().__init__(**merged)

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format not in ("openvino", "onnx"):
            raise QuantizationError(f"compress_weights needs OpenVINO IR or ONNX, got {artifact.format}")
        ov = import_openvino()
        nncf = import_nncf()
        mode = self.opt_str("mode")
        options: dict[str, object] = {"mode": getattr(nncf.CompressWeightsMode, MODES[mode])}
        if mode == "int4":
            options.update(group_size=self.opt_int("group_size"), ratio=self.opt_float("ratio"))
        model = ov.Core().read_model(str(artifact.path))
        try:
            compressed = nncf.compress_weights(model, **options)
        except Exception as exc:  # NNCF raises its own and plain exceptions on unsupported graphs
            raise QuantizationError(f"NNCF could not compress the weights of {artifact.path.name}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        xml = ctx.workdir / f"{artifact.path.stem}.w{mode[3:]}.xml"
        ov.save_model(compressed, str(xml), compress_to_fp16=False)
        bin_file = xml.with_suffix(".bin")
        ctx.log(f"compress_weights: {artifact.path.name} -> {xml.name} ({mode} weights)")
        return artifact.evolve(
            path=xml, format="openvino", precision=mode, digest=digest_files([xml, bin_file]), extra_files=(bin_file,),
            runtime="openvino", metadata={**artifact.metadata, "quantizer": f"nncf {nncf.__version__} compress_weights",
                                          "weight_compression": mode, "activations": "float"},
        )
