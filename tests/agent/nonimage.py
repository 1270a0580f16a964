"""One running agent serving non-image bundles, shared by the stateful/text API tests and the Open
Inference Protocol tests: a recurrent streaming model (state pairs + audio framing), a text encoder with
all-MiniLM-L6-v2's tokenizer, and a plain MLP (FP32, dynamic batch)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeml.bundle import SigningKey
from edgeml.bundle.pack import state_entry, tokenizer_entry
from edgeml.runtimes import open_model
from tests.agent.agent_process import AgentProcess, install, write_config
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.stream_models import FRAME, minilm_tokenizer, tiny_recurrent, tiny_text_encoder
from tests.support.tiny_models import tiny_mlp

TOKEN = "nonimage-token-0123456789"
MAX_SESSIONS = 3


@dataclass(frozen=True)
class Served:
    agent: AgentProcess
    recurrent: Path          # the ONNX file, for hand loops
    text: Path


def serve(tmp: Path) -> Iterator[Served]:
    key = SigningKey.generate()
    (tmp / "builder.pub").write_bytes(key.public_pem())
    recurrent = tiny_recurrent(tmp / "rec.onnx")
    text = tiny_text_encoder(tmp / "text.onnx")
    with open_model(recurrent, "onnxruntime") as backend:
        state = state_entry([], backend.inputs, backend.outputs)
    with open_model(text, "onnxruntime") as backend:
        tok, tok_path = tokenizer_entry(minilm_tokenizer(), backend.inputs)
    framing = {"kind": "audio_frames", "input": "audio", "frame": FRAME, "hop": FRAME}
    smoke = {"audio": np.ones((1, FRAME), np.float32), "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.asarray(16000, np.int64)}
    bundles = [
        make_bundle(tmp, key, recurrent, name="vad", extra={"state": state, "preprocess": framing},
                    smoke_inputs=smoke),
        make_bundle(tmp, key, text, name="minilm", extra={"tokenizer": tok}, extra_files={tok["file"]: tok_path}),
        make_bundle(tmp, key, tiny_mlp(tmp / "mlp.onnx"), name="mlp"),
    ]
    port = free_port()
    config = write_config(tmp / "agent.toml", tmp / "data", tmp / "builder.pub", port, token=TOKEN,
                          extra=f"max_sessions = {MAX_SESSIONS}\nsession_idle_s = 600\n[runtime]\nnum_threads = 1",
                          models={"mlp": {"max_batch_size": 4, "max_wait_ms": 2}})
    for b in bundles:
        assert "installed and current" in install(config, b)
    with AgentProcess(config, port, tmp / "agent.log", TOKEN) as proc:
        yield Served(proc, recurrent, text)
