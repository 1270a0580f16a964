"""Tiny generated ONNX models with the input signatures real models have: a streaming model with a
recurrent state and a scalar, a detector whose height and width are dynamic, and a BERT-like text
encoder (int64 ids + bool mask). Deterministic weights (seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support.tiny_models import _save


def _model(graph, opset: int = 17):  # type: ignore[no-untyped-def]
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    return model


def tiny_stateful(path: Path, *, hidden: int = 128, seed: int = 0) -> Path:
    """Shaped like the silero-vad streaming model: inputs ``audio`` [batch, samples] float, ``state``
    [2, batch, hidden] float, ``sr`` scalar int64; outputs ``prob`` [batch, 1] and ``next_state`` (same
    shape as ``state``). Dynamic dims are unnamed, as in silero-vad's export."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (hidden,)).astype(np.float32), "w_state"),
        numpy_helper.from_array(rng.normal(0, 0.3, (hidden, 1)).astype(np.float32), "w_out"),
        numpy_helper.from_array(np.array(1, np.int64), "layer"),
        numpy_helper.from_array(np.array(1e-4, np.float32), "sr_scale"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["audio"], ["level"], axes=[1], keepdims=1),   # [batch, 1]
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sr_f", "sr_scale"], ["sr_term"]),                   # scalar
        helper.make_node("Mul", ["state", "w_state"], ["carried"]),                  # [2, batch, hidden]
        helper.make_node("Add", ["carried", "level"], ["mixed"]),
        helper.make_node("Add", ["mixed", "sr_term"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["next_state"]),
        helper.make_node("Gather", ["next_state", "layer"], ["top"], axis=0),         # [batch, hidden]
        helper.make_node("MatMul", ["top", "w_out"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_stateful",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [None, None]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, hidden]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("next_state", TensorProto.FLOAT, [2, None, hidden])],
        inits,
    )
    return _save(_model(graph), path)


def tiny_detector(path: Path, *, seed: int = 0, imgsz: tuple[int, int] | None = None) -> Path:
    """YOLO-like: ``images`` [batch, 3, height, width] → stride-2 conv → stride-2 conv → 2x upsample →
    Concat with the stride-2 features → 1x1 head → ``output0`` [batch, anchors, 6]. With height or width 1
    the upsampled map (2) no longer matches the one it is concatenated with (1): ONNX Runtime's Concat
    fails, as on the real detector. ``imgsz`` writes Ultralytics' metadata entry."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, (8,)),
        "w2": rng.normal(0, 0.2, (8, 8, 3, 3)), "b2": rng.normal(0, 0.1, (8,)),
        "wh": rng.normal(0, 0.2, (6, 16, 1, 1)), "bh": rng.normal(0, 0.1, (6,)),
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    inits += [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
              numpy_helper.from_array(np.array([0, 6, -1], np.int64), "head_shape")]
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Resize", ["r2", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["up", "r1"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wh", "bh"], ["head"]),
        helper.make_node("Reshape", ["head", "head_shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["output0"], perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", "anchors", 6])],
        inits,
    )
    model = _model(graph)
    if imgsz:
        helper.set_model_props(model, {"imgsz": str(list(imgsz)), "batch": "1"})
    return _save(model, path)


def tiny_encoder(path: Path, *, vocab: int = 64, dim: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A BERT-like text encoder: ``input_ids`` int64 and ``attention_mask`` bool, both [batch, sequence];
    embeddings → ``layers`` × (single-head attention with Softmax → Add → LayerNormalization → GELU
    feed-forward → Add → LayerNormalization) → ``last_hidden_state`` [batch, sequence, dim] and the
    mask-weighted mean ``sentence_embedding`` [batch, dim]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (vocab, dim)).astype(np.float32), "embeddings"),
             numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "scale"),
             numpy_helper.from_array(np.array(-10000.0, np.float32), "neg"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(1 / np.sqrt(2), np.float32), "rsqrt2"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    nodes = [helper.make_node("Gather", ["embeddings", "input_ids"], ["h0"]),
             helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mask_f"], ["masked_out"]),
             helper.make_node("Mul", ["masked_out", "neg"], ["bias2d"]),
             helper.make_node("Unsqueeze", ["bias2d", "ax1"], ["attn_bias"])]   # [batch, 1, sequence]
    x = "h0"
    for i in range(layers):
        x = _encoder_layer(nodes, inits, x, f"l{i}", dim, rng)
    nodes += [helper.make_node("Identity", [x], ["last_hidden_state"]),
              helper.make_node("Unsqueeze", ["mask_f", "ax2"], ["mask3"]),
              helper.make_node("Mul", [x, "mask3"], ["kept"]),
              helper.make_node("ReduceSum", ["kept", "ax1"], ["summed"], keepdims=0),
              helper.make_node("ReduceSum", ["mask3", "ax1"], ["count"], keepdims=0),
              helper.make_node("Div", ["summed", "count"], ["sentence_embedding"])]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", dim]),
         helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    return _save(_model(graph), path)


def _encoder_layer(nodes: list, inits: list, x: str, p: str, dim: int, rng: np.random.Generator) -> str:  # type: ignore[type-arg]
    from onnx import helper, numpy_helper

    def weight(name: str, shape: tuple[int, ...], std: float) -> str:
        inits.append(numpy_helper.from_array(rng.normal(0, std, shape).astype(np.float32), f"{p}_{name}"))
        return f"{p}_{name}"

    def linear(src: str, name: str, out: int, std: float = 0.2) -> str:
        nodes.append(helper.make_node("MatMul", [src, weight(f"{name}_w", (dim if name != "ff2" else 4 * dim, out),
                                                            std)], [f"{p}_{name}_mm"]))
        nodes.append(helper.make_node("Add", [f"{p}_{name}_mm", weight(f"{name}_b", (out,), 0.05)], [f"{p}_{name}"]))
        return f"{p}_{name}"

    def norm(src: str, name: str) -> str:
        inits.append(numpy_helper.from_array(np.ones(dim, np.float32), f"{p}_{name}_g"))
        beta = weight(f"{name}_beta", (dim,), 0.05)
        nodes.append(helper.make_node("LayerNormalization", [src, f"{p}_{name}_g", beta], [f"{p}_{name}"],
                                      axis=-1, epsilon=1e-5))
        return f"{p}_{name}"

    q, k, v = linear(x, "q", dim), linear(x, "k", dim), linear(x, "v", dim)
    nodes += [helper.make_node("Transpose", [k], [f"{p}_kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", [q, f"{p}_kt"], [f"{p}_scores_raw"]),
              helper.make_node("Mul", [f"{p}_scores_raw", "scale"], [f"{p}_scores_scaled"]),
              helper.make_node("Add", [f"{p}_scores_scaled", "attn_bias"], [f"{p}_scores"]),
              helper.make_node("Softmax", [f"{p}_scores"], [f"{p}_probs"], axis=-1),
              helper.make_node("MatMul", [f"{p}_probs", v], [f"{p}_ctx"])]
    attn = linear(f"{p}_ctx", "o", dim)
    nodes.append(helper.make_node("Add", [attn, x], [f"{p}_res1"]))
    h = norm(f"{p}_res1", "ln1")
    up = linear(h, "ff1", 4 * dim)
    nodes += [helper.make_node("Mul", [up, "rsqrt2"], [f"{p}_g_div"]),
              helper.make_node("Erf", [f"{p}_g_div"], [f"{p}_g_erf"]),
              helper.make_node("Add", [f"{p}_g_erf", "one"], [f"{p}_g_add"]),
              helper.make_node("Mul", [up, f"{p}_g_add"], [f"{p}_g_mul"]),
              helper.make_node("Mul", [f"{p}_g_mul", "half"], [f"{p}_gelu"])]
    down = linear(f"{p}_gelu", "ff2", dim)
    nodes.append(helper.make_node("Add", [down, h], [f"{p}_res2"]))
    return norm(f"{p}_res2", "ln2")
