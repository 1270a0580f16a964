"""Non-image models in process: state pairs, streams, audio framing and the bundle's tokenizer.

Given a stateful model or a text model packed with what travels beside it (edgeml.bundle.prepost), when
edgeml.load runs it, then a stream equals a hand-written loop that feeds the state back, framing equals
running the frames one by one, text goes through the bundle's own tokenizer, and the signed manifest
covers all of it.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgeml
from edgeml.bundle import TensorSpec
from edgeml.bundle.pack import state_entry, tokenizer_entry
from edgeml.bundle.prepost import StatePair, infer_state_pairs
from edgeml.errors import ConfigError, InferenceInputError, IntegrityError, ManifestError
from edgeml.inference import open_bundle
from edgeml.runtimes import open_model
from tests.support.bundles import make_bundle
from tests.support.stream_models import FRAME, hand_loop, minilm_tokenizer, tiny_recurrent, tiny_text_encoder

SR = np.asarray(16000, dtype=np.int64)


def _frames(n: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, FRAME).astype(np.float32) for _ in range(n)]


@pytest.fixture
def recurrent(tmp_path):
    return tiny_recurrent(tmp_path / "rec.onnx")


def _stateful_bundle(tmp_path, key, model, **extra):
    with open_model(model, "onnxruntime") as backend:
        state = state_entry([], backend.inputs, backend.outputs)
    return make_bundle(tmp_path / "rec.edgepkg", key, model, name="rec", extra={"state": state, **extra})


def _spec(name, shape, dtype="float32"):
    return TensorSpec(name, dtype, tuple(shape))


@pytest.mark.parametrize(("output", "found"), [
    ("stateN", True), ("state_out", True), ("next_state", True), ("new_state", True), ("staten", True),
    ("state_new_thing", False), ("output", False),
])
def test_state_pairs_are_inferred_only_from_the_documented_names(output, found):
    inputs = [_spec("audio", [1, 512]), _spec("state", [2, "batch", 128])]
    outputs = [_spec("prob", [1, 1]), _spec(output, [2, "batch", 128])]

    pairs = infer_state_pairs(inputs, outputs)

    assert pairs == ([StatePair("state", output)] if found else [])


def test_a_name_match_of_another_shape_or_dtype_is_no_state_pair():
    inputs = [_spec("h", [1, 64]), _spec("c", [1, 64])]
    outputs = [_spec("hn", [1, 32]), _spec("cn", [1, 64], "float16")]

    assert infer_state_pairs(inputs, outputs) == []
    with pytest.raises(ConfigError, match="dtype and shape must match"):
        state_entry(["h=hn"], inputs, outputs)
    with pytest.raises(ConfigError, match="'nope' is not a model output"):
        state_entry(["h=nope"], inputs, outputs)


def test_stream_equals_a_hand_loop_feeding_state_back(tmp_path, signing_key, trust, recurrent):
    frames = _frames(6)
    bundle = _stateful_bundle(tmp_path, signing_key, recurrent)
    want = hand_loop(recurrent, frames)

    with edgeml.load(bundle, trust) as model:
        assert model.manifest.state == [StatePair("state", "stateN")]
        stream = model.stream()
        got = [stream.predict(audio=f.reshape(1, FRAME), sr=SR) for f in frames]
        # the explicit form still works: the caller passes the state and gets the next one back
        explicit = model.predict(audio=frames[0].reshape(1, FRAME), sr=SR, state=np.zeros((2, 1, 128), np.float32))
        stream.reset()
        again = stream.predict(audio=frames[0].reshape(1, FRAME), sr=SR)

    assert all(set(g) == {"prob"} for g in got)          # the stream keeps the state output to itself
    np.testing.assert_allclose(np.concatenate([g["prob"] for g in got]), np.concatenate(want), rtol=1e-6)
    assert not np.allclose(want[0], want[1])             # the state matters: frame order changes outputs
    assert set(explicit) == {"prob", "stateN"} and np.allclose(explicit["prob"], want[0])
    np.testing.assert_allclose(again["prob"], want[0], rtol=1e-6)


def test_audio_framing_runs_a_long_buffer_frame_by_frame_and_keeps_the_rest(tmp_path, signing_key, trust,
                                                                             recurrent):
    frames = _frames(5)
    pcm = np.concatenate(frames)
    framing = {"kind": "audio_frames", "input": "audio", "frame": FRAME, "hop": FRAME}
    bundle = _stateful_bundle(tmp_path, signing_key, recurrent, preprocess=framing)
    want = np.concatenate(hand_loop(recurrent, frames))

    with edgeml.load(bundle, trust) as model, model.stream() as stream:
        first = stream.predict(audio=pcm[:1300], sr=SR)        # 2 frames, 276 samples wait
        assert (stream.last.frames, stream.last.pending) == (2, 1300 - 2 * FRAME)
        rest = stream.predict(audio=pcm[1300:], sr=SR)          # the kept samples come first
        assert (stream.last.frames, stream.last.pending) == (3, 0)

    assert first["prob"].shape == (2, 1, 1)                    # frames stacked on a new first axis
    np.testing.assert_allclose(np.concatenate([first["prob"], rest["prob"]])[:, 0], want, rtol=1e-6)


def test_a_framing_entry_must_fit_the_model(tmp_path, signing_key, recurrent):
    framing = {"kind": "audio_frames", "input": "audio", "frame": 400, "hop": 400}
    with pytest.raises(ManifestError, match="last dimension is the frame size 400"):
        _stateful_bundle(tmp_path, signing_key, recurrent, preprocess=framing)


def test_state_of_another_shape_asks_for_a_reset(tmp_path, signing_key, trust):
    model_path = tiny_recurrent(tmp_path / "dyn.onnx", batch="batch", with_sr=False)
    with open_model(model_path, "onnxruntime") as backend:
        state = state_entry([], backend.inputs, backend.outputs)
    smoke = {"audio": np.ones((1, FRAME), np.float32), "state": np.zeros((2, 1, 128), np.float32)}
    bundle = make_bundle(tmp_path / "dyn.edgepkg", signing_key, model_path, name="dyn", extra={"state": state},
                         smoke_inputs=smoke)

    with edgeml.load(bundle, trust) as model:
        stream = model.stream()
        out = stream.predict(audio=np.zeros((3, FRAME), np.float32))   # init state takes batch 3 from audio
        assert out["prob"].shape == (3, 1)
        with pytest.raises(InferenceInputError, match="reset the stream"):
            stream.predict(audio=np.zeros((1, FRAME), np.float32))


@pytest.fixture
def text_bundle(tmp_path, signing_key):
    model = tiny_text_encoder(tmp_path / "text.onnx")
    with open_model(model, "onnxruntime") as backend:
        entry, path = tokenizer_entry(minilm_tokenizer(), backend.inputs)
    return model, make_bundle(tmp_path / "text.edgepkg", signing_key, model, name="text",
                              extra={"tokenizer": entry}, extra_files={entry["file"]: path})


def test_predict_text_uses_the_bundles_tokenizer(text_bundle, trust):
    from tokenizers import Tokenizer

    model_path, bundle = text_bundle
    texts = ["The quick brown fox.", "edge devices run text models too, with their tokenizer"]
    tok = Tokenizer.from_file(str(minilm_tokenizer()))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=128)
    enc = tok.encode_batch(texts)
    feeds = {"input_ids": np.asarray([e.ids for e in enc], np.int64),
             "attention_mask": np.asarray([e.attention_mask for e in enc], np.int64),
             "token_type_ids": np.asarray([e.type_ids for e in enc], np.int64)}
    with open_model(model_path, "onnxruntime") as backend:
        want = backend.run(feeds)["embedding"]

    with edgeml.load(bundle, trust) as model:
        assert model.manifest.tokenizer is not None and model.manifest.tokenizer.max_length == 128
        got = model.predict(text=texts)["embedding"]
        with pytest.raises(InferenceInputError, match="non-empty list of strings"):
            model.predict(text=[1, 2])

    assert feeds["input_ids"][0, 0] == 101                 # [CLS]: the real WordPiece vocabulary
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_tokenizer_is_covered_by_the_signature(text_bundle, trust):
    _, bundle = text_bundle
    root = open_bundle(bundle, trust).root
    assert root is not None
    tokenizer = root / "tokenizer" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes().replace(b'"[CLS]"', b'"[XLS]"', 1))
    with pytest.raises(IntegrityError, match="modified"):
        edgeml.load(root, trust)


def test_a_tokenizer_needs_a_model_with_token_inputs(tmp_path, recurrent):
    with open_model(recurrent, "onnxruntime") as backend, pytest.raises(ConfigError, match="no input named input_ids"):
        tokenizer_entry(minilm_tokenizer(), backend.inputs)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with open_model(tiny_text_encoder(tmp_path / "t.onnx"), "onnxruntime") as backend, \
            pytest.raises(Exception, match="not a tokenizers file"):
        tokenizer_entry(bad, backend.inputs)


def test_build_ships_the_tokenizer_and_the_state_pairs(tmp_path):
    """edgeml.compile end to end: --tokenizer on a text model, state pairs found by name on a stateful one."""
    from edgeml.bundle import generate_key

    generate_key()
    text = edgeml.compile(tiny_text_encoder(tmp_path / "t.onnx"), "x86-cpu", precision="fp32",
                          tokenizer=minilm_tokenizer(), benchmark_seconds=0.05, progress=False,
                          output=tmp_path / "t.edgepkg")
    stateful = edgeml.compile(tiny_recurrent(tmp_path / "r.onnx"), "x86-cpu", precision="fp32",
                              audio_frames="audio=512/256", benchmark_seconds=0.05, progress=False,
                              output=tmp_path / "r.edgepkg")

    with edgeml.load(text.bundle_path) as model:
        assert model.manifest.raw["tokenizer"]["file"] == "tokenizer/tokenizer.json"
        assert model.predict(text=["hello"])["embedding"].shape == (1, 16)
    with edgeml.load(stateful.bundle_path) as model:
        assert model.manifest.raw["state"] == [{"input": "state", "output": "stateN", "init": "zeros"}]
        assert model.manifest.raw["preprocess"] == {"kind": "audio_frames", "input": "audio", "frame": 512,
                                                    "hop": 256}
    with pytest.raises(ConfigError, match="INPUT=OUTPUT"):
        edgeml.compile(tmp_path / "r.onnx", "x86-cpu", state=["state"])


def test_build_flags_reach_the_build_request(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from edgeml.cli import main
    from edgeml.compiler import api

    seen = []
    monkeypatch.setattr(api, "compile", lambda request: seen.append(request) or (_ for _ in ()).throw(SystemExit(0)))
    tokenizer = minilm_tokenizer()

    res = CliRunner().invoke(main, ["build", "m.onnx", "-t", "x86-cpu", "--tokenizer", str(tokenizer),
                                    "--state", "h=hn", "--state", "c=cn", "--audio-frames", "audio=512/160"])
    bad = CliRunner().invoke(main, ["build", "m.onnx", "-t", "x86-cpu", "--audio-frames", "audio=160/512"])

    assert res.exit_code == 0, res.output
    (request,) = seen
    assert (request.tokenizer, request.state) == (str(tokenizer), ("h=hn", "c=cn"))
    assert request.framing == {"kind": "audio_frames", "input": "audio", "frame": 512, "hop": 160}
    assert bad.exit_code == 2 and "0 < HOP <= FRAME" in bad.output
