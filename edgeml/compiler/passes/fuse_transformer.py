"""``fuse_transformer``: ONNX Runtime's transformer graph fusions for encoder models (BERT, MiniLM, ...).

``onnxruntime.transformers.optimizer`` (model type ``bert``) rewrites the exported attention, layer
normalization and GELU sub-graphs into ONNX Runtime's fused ``com.microsoft`` kernels (``Attention``,
``SkipLayerNormalization``, ``BiasGelu``/``FastGelu``, ``EmbedLayerNormalization``). Those operators run only
on ONNX Runtime, so the plan uses this pass only in ONNX Runtime rows of transformer-like graphs
(:func:`edgeml.compiler.modelinfo.is_transformer_like`). Fusion is a rewrite, not an approximation: the
fidelity gate still compares the result with the source model. When nothing fuses the model is kept.
"""

from __future__ import annotations

from typing import ClassVar

from edgeml.compiler.modelinfo import digest_files, import_onnx, load_onnx, save_onnx
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_ort import validate_config
from edgeml.errors import CompileError
from edgeml.jsontypes import JSON


class FuseTransformer(Pass):
    """Config: ``model_type`` (the optimizer's family, default "bert"), ``num_heads`` and ``hidden_size``
    (0: detected from the graph)."""

    name = "fuse_transformer"
    uses_calibration: ClassVar[bool] = False
    defaults: ClassVar[dict[str, JSON]] = {"model_type": "bert", "num_heads": 0, "hidden_size": 0}

    def __init__(self, **config: JSON) -> None:
        super().__init__(**validate_config(self.name, config, self.defaults))

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format != "onnx":
            raise CompileError(f"fuse_transformer needs an ONNX model, got {artifact.format} ({artifact.path})")
        try:
            from onnxruntime.transformers.optimizer import optimize_model
        except ImportError as exc:
            raise CompileError(f"onnxruntime.transformers is missing from this onnxruntime install: {exc}") from exc
        # opt_level 0: only the fusions; ONNX Runtime's own graph optimizations run at load time on the device
        optimized = optimize_model(str(artifact.path), model_type=self.opt_str("model_type"),
                                   num_heads=self.opt_int("num_heads"), hidden_size=self.opt_int("hidden_size"),
                                   opt_level=0, use_gpu=False)
        fused = {op: int(n) for op, n in optimized.get_fused_operator_statistics().items() if n}
        if not fused:
            ctx.log("fuse_transformer: nothing to fuse; the model is kept as it was")
            return artifact.evolve(metadata={**artifact.metadata, "fused_operators": {}})
        model = optimized.model
        if not any(op.domain == "com.microsoft" for op in model.opset_import):
            # the optimizer adds this import only in its own save; fused kernels live in that domain
            model.opset_import.append(import_onnx().helper.make_opsetid("com.microsoft", 1))
        files = save_onnx(model, ctx.workdir / "model.onnx")
        before = len(load_onnx(artifact.path).graph.node)
        ctx.log(f"fuse_transformer: {before} -> {len(model.graph.node)} nodes ({fused})")
        fused_json: dict[str, JSON] = dict(fused)
        return artifact.evolve(path=files[0], extra_files=tuple(files[1:]), digest=digest_files(files),
                               metadata={**artifact.metadata, "fused_operators": fused_json})
