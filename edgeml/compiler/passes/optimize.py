"""``optimize``: ONNX-level cleanups that keep the model portable to every runtime.

ONNX Runtime's *basic* graph optimizations (constant folding, redundant node removal, Conv+BN/Add/Mul
fusion) only produce standard ONNX operators, so the saved graph still runs on OpenVINO, TensorRT and
any ONNX runtime; the *extended* levels emit ``com.microsoft`` fused ops and are never used here.
Shape inference then records intermediate shapes, which quantizers use. If optimizing fails or yields
a graph the ONNX checker rejects, the pass keeps the input model and says so: a cleanup must never
break a build.
"""

from __future__ import annotations

from typing import ClassVar

from edgeml.compiler.modelinfo import digest_files, import_onnx, load_onnx, save_onnx
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.errors import ConfigError

LEVELS = ("basic", "none")


def _ort_basic(src: str, dst: str) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


class OptimizePass(Pass):
    """Config: ``level`` ("basic" | "none", default "basic")."""

    name = "optimize"
    uses_calibration: ClassVar[bool] = False

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        self.check_options(("level",))
        level = self.config.get("level", "basic")
        if level not in LEVELS:
            raise ConfigError(f"pass 'optimize': level '{level}' must be one of {', '.join(LEVELS)}")
        if artifact.format != "onnx" or level == "none":
            return artifact
        onnx = import_onnx()
        staged = ctx.workdir / "ort-basic.onnx"
        try:
            _ort_basic(str(artifact.path), str(staged))
            model = load_onnx(staged)
            onnx.checker.check_model(model)
            model = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # any failure leaves the model as it was
            ctx.log(f"optimize: kept the model unchanged ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            return artifact.evolve(metadata={**artifact.metadata, "optimize": f"skipped: {type(exc).__name__}"})
        files = save_onnx(model, ctx.workdir / "model.onnx")
        staged.unlink(missing_ok=True)
        before = len(load_onnx(artifact.path).graph.node)
        return artifact.evolve(
            path=files[0], extra_files=tuple(files[1:]), digest=digest_files(files),
            metadata={**artifact.metadata, "optimize": f"basic: {before} -> {len(model.graph.node)} nodes"},
        )
