"""Stateful and text models through a real `edgeml-agent run` process and its own HTTP API (httpx).

Given a streaming model whose bundle declares its state pair, when a client sends only its frames with a
session id, then the agent's answers equal a local loop that feeds the state back by hand; sessions are
separate, bounded (LRU) and resettable; the explicit form (client passes the state) still works; and a
text model answers {"text": [...]} through the bundle's tokenizer.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.agent.nonimage import MAX_SESSIONS, serve
from tests.support.stream_models import FRAME, hand_loop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("nonimage"))


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.agent.url, headers=served.agent.headers, timeout=30) as c:
        yield c


def _frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, FRAME).astype(np.float32) for _ in range(n)]


def _post_frame(client, frame, session, **extra):
    body = {"inputs": {"audio": frame.reshape(1, FRAME).tolist(), "sr": 16000}, **extra}
    return client.post("/v1/models/vad/infer", json=body, headers={"X-Session-Id": session})


def test_agent_kept_state_equals_a_hand_loop(client, served):
    a, b = _frames(5, seed=1), _frames(5, seed=2)
    want_a, want_b = hand_loop(served.recurrent, a), hand_loop(served.recurrent, b)

    got_a, got_b = [], []
    for fa, fb in zip(a, b, strict=True):       # two streams interleaved: each keeps its own state
        ra, rb = _post_frame(client, fa, "mic-a"), _post_frame(client, fb, "mic-b")
        assert ra.status_code == 200, ra.text
        assert set(ra.json()["outputs"]) == {"prob"} and ra.json()["session"] == "mic-a"
        got_a.append(ra.json()["outputs"]["prob"])
        got_b.append(rb.json()["outputs"]["prob"])

    np.testing.assert_allclose(np.asarray(got_a, np.float32)[:, :, 0], np.concatenate(want_a), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_b, np.float32)[:, :, 0], np.concatenate(want_b), rtol=1e-5)


def test_reset_starts_a_session_over(client, served):
    frames = _frames(2, seed=5)
    want = hand_loop(served.recurrent, frames)
    _post_frame(client, frames[0], "reset-me")
    second = _post_frame(client, frames[1], "reset-me").json()["outputs"]["prob"]
    deleted = client.delete("/v1/models/vad/sessions/reset-me")
    again = _post_frame(client, frames[0], "reset-me").json()["outputs"]["prob"]
    by_field = _post_frame(client, frames[0], "reset-me", reset=True).json()["outputs"]["prob"]

    np.testing.assert_allclose(second, want[1], rtol=1e-5)
    assert deleted.status_code == 200 and deleted.json()["reset"] is True
    np.testing.assert_allclose(again, want[0], rtol=1e-5)
    np.testing.assert_allclose(by_field, want[0], rtol=1e-5)


def test_explicit_state_still_works_and_missing_state_says_what_to_do(client, served):
    frame = _frames(1, seed=7)[0]
    want = hand_loop(served.recurrent, [frame])[0]
    explicit = client.post("/v1/models/vad/infer", json={"inputs": {
        "audio": frame.reshape(1, FRAME).tolist(), "sr": 16000, "state": np.zeros((2, 1, 128)).tolist()}})
    missing = client.post("/v1/models/vad/infer", json={"inputs": {"audio": frame.reshape(1, FRAME).tolist(),
                                                                   "sr": 16000}})
    stateless = client.post("/v1/models/mlp/infer", json={"inputs": [[1, 2, 3, 4]]}, headers={"X-Session-Id": "s"})
    bad_id = _post_frame(client, frame, "no spaces allowed")

    assert explicit.status_code == 200
    assert set(explicit.json()["outputs"]) == {"prob", "stateN"}
    np.testing.assert_allclose(explicit.json()["outputs"]["prob"], want, rtol=1e-5)
    assert missing.status_code == 400 and "X-Session-Id" in missing.json()["error"]
    assert stateless.status_code == 400 and "keeps no state" in stateless.json()["error"]
    assert bad_id.status_code == 400 and "session id" in bad_id.json()["error"]


def test_a_long_pcm_buffer_is_framed_and_the_tail_waits_for_the_next_post(client, served):
    frames = _frames(4, seed=9)
    pcm = np.concatenate(frames)
    want = np.concatenate(hand_loop(served.recurrent, frames))

    one = client.post("/v1/models/vad/infer", json={"inputs": {"audio": pcm[:1500].tolist(), "sr": 16000},
                                                    "session": "pcm"}).json()
    two = client.post("/v1/models/vad/infer", json={"inputs": {"audio": pcm[1500:].tolist(), "sr": 16000},
                                                    "session": "pcm"}).json()

    assert (one["frames"], one["pending_samples"], two["frames"], two["pending_samples"]) == (2, 476, 2, 0)
    got = np.asarray(one["outputs"]["prob"] + two["outputs"]["prob"], np.float32)
    np.testing.assert_allclose(got[:, 0, 0], want[:, 0], rtol=1e-5)


def test_sessions_are_bounded_least_recently_used_first(client, served):
    frames = _frames(2, seed=11)
    want = hand_loop(served.recurrent, frames)
    _post_frame(client, frames[0], "keep")
    for i in range(MAX_SESSIONS):               # more new sessions than the agent keeps: 'keep' is dropped
        _post_frame(client, frames[0], f"filler-{i}")
    after = _post_frame(client, frames[1], "keep").json()["outputs"]["prob"]
    stats = client.get("/v1/sessions").json()

    # 'keep' started over from the init state: its answer is that of a first frame, not of a second
    fresh = hand_loop(served.recurrent, [frames[1]])[0]
    np.testing.assert_allclose(after, fresh, rtol=1e-5)
    assert not np.allclose(after, want[1])
    assert stats["active"] == MAX_SESSIONS and stats["evicted"] >= 1


def test_text_goes_through_the_bundles_tokenizer(client, served):
    texts = ["a sentence to embed", "and another, longer one to see the padding work"]
    resp = client.post("/v1/models/minilm/infer", json={"text": texts})
    local = client.post("/v1/models/minilm/infer", json={"text": texts[:1]})
    empty = client.post("/v1/models/minilm/infer", json={"text": []})

    assert resp.status_code == 200, resp.text
    emb = np.asarray(resp.json()["outputs"]["embedding"])
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(emb[0], local.json()["outputs"]["embedding"][0], rtol=1e-5)   # padding is masked
    assert empty.status_code == 400 and "non-empty list of strings" in empty.json()["error"]
    described = client.get("/v1/models/minilm").json()
    assert described["tokenizer"]["inputs"]["input_ids"] == "input_ids"
