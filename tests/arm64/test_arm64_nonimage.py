"""Non-image bundles on ARM64 (emulated): a streaming model with agent-kept state and a text model with
its tokenizer, served by the arm64 agent daemon and called from the host.

Given arm64-cpu bundles built on x86 (state pair + audio framing; all-MiniLM-L6-v2's tokenizer.json),
when the arm64 agent serves them, then a session's answers equal an x86 loop feeding the state by hand
and {"text": [...]} gives the x86 embedding of the same tokens: the aarch64 ``tokenizers`` wheel and
the session code run there. One daemon for both (each emulated start costs tens of seconds).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

import edgeml
from edgeml.bundle import SigningKey, TrustStore
from edgeml.bundle.pack import state_entry, tokenizer_entry
from edgeml.runtimes import open_model
from edgeml.runtimes.selection import SelectionPolicy
from tests.agent.agent_process import install
from tests.arm64.test_arm64 import _wait_healthy
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.stream_models import FRAME, hand_loop, minilm_tokenizer, tiny_recurrent, tiny_text_encoder

pytestmark = [pytest.mark.arm64, pytest.mark.slow]


def _bundles(tmp: Path, key: SigningKey) -> tuple[Path, Path, Path]:
    recurrent, text = tiny_recurrent(tmp / "rec.onnx"), tiny_text_encoder(tmp / "text.onnx")
    with open_model(recurrent, "onnxruntime") as backend:
        state = state_entry([], backend.inputs, backend.outputs)
    with open_model(text, "onnxruntime") as backend:
        tok, tok_path = tokenizer_entry(minilm_tokenizer(), backend.inputs)
    smoke = {"audio": np.ones((1, FRAME), np.float32), "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.asarray(16000, np.int64)}
    framing = {"kind": "audio_frames", "input": "audio", "frame": FRAME, "hop": FRAME}
    vad = make_bundle(tmp, key, recurrent, name="vad", target="arm64-cpu", smoke_inputs=smoke,
                      extra={"state": state, "preprocess": framing})
    minilm = make_bundle(tmp, key, text, name="minilm", target="arm64-cpu", extra={"tokenizer": tok},
                         extra_files={tok["file"]: tok_path})
    return vad, minilm, recurrent


def test_stateful_and_text_bundles_through_the_arm64_agent(arm64_python: Path, builder_key: SigningKey,
                                                             tmp_path: Path) -> None:
    vad, minilm, recurrent = _bundles(tmp_path, builder_key)
    pub = tmp_path / "builder.pub"
    pub.write_bytes(builder_key.public_pem())
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(f'data_dir = "data"\ntrusted_keys = ["{pub}"]\n\n[server]\nhost = "127.0.0.1"\nport = {port}\n')
    for bundle in (vad, minilm):   # installed by the host's agent (the same files; emulated starts are slow)
        assert "installed and current" in install(config, bundle)
    rng = np.random.default_rng(5)
    frames = [rng.normal(0, 1, FRAME).astype(np.float32) for _ in range(4)]
    want = np.concatenate(hand_loop(recurrent, frames))            # x86, state fed by hand
    texts = ["edge devices run text models", "with the tokenizer inside the bundle"]

    log = tmp_path / "agent.log"
    with open(log, "wb") as log_file:
        daemon = subprocess.Popen([str(arm64_python), "-m", "edgeml_agent.cli", "run", "--config", str(config)],
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            health = _wait_healthy(client, daemon, log)
            assert {"vad", "minilm"} <= set(health["models"]), health
            pcm = np.concatenate(frames)
            one = client.post("/v1/models/vad/infer", headers={"X-Session-Id": "mic"},
                              json={"inputs": {"audio": pcm[:1300].tolist(), "sr": 16000}})
            two = client.post("/v1/models/vad/infer", headers={"X-Session-Id": "mic"},
                              json={"inputs": {"audio": pcm[1300:].tolist(), "sr": 16000}})
            embedded = client.post("/v1/models/minilm/infer", json={"text": texts})
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0, log.read_text()[-4000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)

    assert one.status_code == 200 and two.status_code == 200, (one.text, two.text)
    got = np.asarray(one.json()["outputs"]["prob"] + two.json()["outputs"]["prob"], np.float32)[:, 0, 0]
    np.testing.assert_allclose(got, want[:, 0], rtol=0, atol=1e-5)   # NEON vs AVX2 summation order only
    assert embedded.status_code == 200, embedded.text
    x86_policy = SelectionPolicy(allow_other_arch=True)           # the same arm64-cpu bundle, run here
    with edgeml.load(minilm, TrustStore([builder_key.public_key]), policy=x86_policy) as x86:
        want_emb = x86.predict(text=texts)["embedding"]
    np.testing.assert_allclose(np.asarray(embedded.json()["outputs"]["embedding"]), want_emb, rtol=0,
                               atol=1e-5 * float(np.abs(want_emb).max()))
