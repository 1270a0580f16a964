"""The Open Inference Protocol (KServe v2) with the real ``tritonclient[http]`` against a running agent.

Given an agent serving an MLP (FP32), a text encoder with its tokenizer and a streaming model, when a
Triton client talks to it unchanged, then health, metadata and inference work with FP32, INT64 and BYTES
tensors (binary and JSON encodings), Triton's sequence parameters drive the agent-kept state, and the
client's mistakes come back as 4xx with a message.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient  # the test extra's real client: missing is a failure, not a skip
from tritonclient.utils import InferenceServerException

from tests.agent.nonimage import serve
from tests.support.stream_models import FRAME, hand_loop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("oip"))


@pytest.fixture(scope="module")
def triton(served):
    client = httpclient.InferenceServerClient(served.agent.url.removeprefix("http://"), network_timeout=30)
    yield client
    client.close()


def _headers(served):
    return served.agent.headers


def test_health_and_server_metadata(triton, served):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata(headers=_headers(served))
    assert meta["name"] == "edgeml-agent" and "binary_tensor_data" in meta["extensions"]
    assert triton.is_model_ready("mlp", headers=_headers(served))
    assert not triton.is_model_ready("nope", headers=_headers(served))


def test_model_metadata_lists_typed_tensors_and_text_in_place_of_token_ids(triton, served):
    mlp = triton.get_model_metadata("mlp", headers=_headers(served))
    text = triton.get_model_metadata("minilm", headers=_headers(served))
    vad = triton.get_model_metadata("vad", model_version="1.0.0", headers=_headers(served))

    assert mlp["versions"] == ["1.0.0"] and mlp["platform"] == "edgeml_onnxruntime"
    assert mlp["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [i["name"] for i in text["inputs"]] == ["text"] and text["inputs"][0]["datatype"] == "BYTES"
    assert {i["name"]: i["datatype"] for i in vad["inputs"]} == {"audio": "FP32", "state": "FP32", "sr": "INT64"}


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_infer_matches_the_agents_own_api(triton, served, binary):
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)

    result = triton.infer("mlp", [inp], outputs=[out], headers=_headers(served), request_id="r1")
    own = httpx.post(f"{served.agent.url}/v1/models/mlp/infer", json={"inputs": x.tolist()},
                     headers=_headers(served)).json()

    got = result.as_numpy("y")
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, np.asarray(own["outputs"]["y"]), rtol=1e-6)
    assert result.get_response()["id"] == "r1" and result.get_response()["model_version"] == "1.0.0"


def _token_inputs(ids: np.ndarray, mask: np.ndarray) -> list:
    inputs = []
    for name, value in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", np.zeros_like(ids))):
        inp = httpclient.InferInput(name, list(value.shape), "INT64")
        inp.set_data_from_numpy(value)
        inputs.append(inp)
    return inputs


def test_bytes_text_equals_int64_token_ids(triton, served):
    from tokenizers import Tokenizer

    from tests.support.stream_models import minilm_tokenizer

    sentence = "Edge devices run text models too."
    # this tokenizer.json pads to 128 tokens itself; the mask says which are real
    encoding = Tokenizer.from_file(str(minilm_tokenizer())).encode(sentence)
    ids = np.asarray([encoding.ids], dtype=np.int64)
    mask = np.asarray([encoding.attention_mask], dtype=np.int64)
    text = httpclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.asarray([sentence.encode()], dtype=np.object_))

    by_text = triton.infer("minilm", [text], headers=_headers(served)).as_numpy("embedding")
    by_ids = triton.infer("minilm", _token_inputs(ids, mask), headers=_headers(served)).as_numpy("embedding")

    assert by_text.shape == (1, 16)
    np.testing.assert_allclose(by_text, by_ids, rtol=1e-6)


def test_sequence_parameters_keep_the_state_like_a_hand_loop(triton, served):
    rng = np.random.default_rng(21)
    frames = [rng.normal(0, 1, FRAME).astype(np.float32) for _ in range(4)]
    want = np.concatenate(hand_loop(served.recurrent, frames))

    got = []
    for i, frame in enumerate(frames):
        audio = httpclient.InferInput("audio", [1, FRAME], "FP32")
        audio.set_data_from_numpy(frame.reshape(1, FRAME))
        sr = httpclient.InferInput("sr", [], "INT64")
        sr.set_data_from_numpy(np.asarray(16000, dtype=np.int64))
        result = triton.infer("vad", [audio, sr], headers=_headers(served), sequence_id=42,
                              sequence_start=i == 0, sequence_end=i == len(frames) - 1)
        got.append(result.as_numpy("prob"))
    # sequence_end dropped the session: the same id starts over from the init state
    after_end = triton.infer("vad", [audio, sr], headers=_headers(served), sequence_id=42).as_numpy("prob")

    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5)
    np.testing.assert_allclose(after_end, hand_loop(served.recurrent, frames[-1:])[0], rtol=1e-5)


def test_client_mistakes_are_4xx_with_a_message(triton, served):
    wrong = httpclient.InferInput("x", [2, 5], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 5), np.float32))
    with pytest.raises(InferenceServerException, match=r"input 'x' has shape \[2, 5\]") as shape_error:
        triton.infer("mlp", [wrong], headers=_headers(served))
    with pytest.raises(InferenceServerException, match="not loaded") as unknown:
        triton.get_model_metadata("nope", headers=_headers(served))
    with pytest.raises(InferenceServerException, match="API token"):
        triton.get_model_metadata("mlp")                                 # no token: 401

    assert shape_error.value.status() == "400" and unknown.value.status() == "404"
    raw = httpx.post(f"{served.agent.url}/v2/models/mlp/infer", headers=_headers(served),
                     json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert raw.status_code == 400 and "3 values for shape [1, 4]" in raw.json()["error"]
    bad_type = httpx.post(f"{served.agent.url}/v2/models/mlp/infer", headers=_headers(served),
                          json={"inputs": [{"name": "x", "shape": [1], "datatype": "COMPLEX", "data": [1]}]})
    assert bad_type.status_code == 400 and "datatype" in bad_type.json()["error"]


def test_other_typed_tensors_are_cast_where_numpy_casts_safely(triton, served):
    """FP16 into an FP32 input, INT32 and BOOL into INT64 inputs: accepted like the own API accepts them;
    FP32 into an INT64 input is refused (it would truncate)."""
    x = np.asarray([[0.5, 1.5, -2.0, 3.25]], dtype=np.float16)
    half = httpclient.InferInput("x", [1, 4], "FP16")
    half.set_data_from_numpy(x)
    ids = np.asarray([[101, 7592, 102]], dtype=np.int32)
    inputs = []
    for name, value, kind in (("input_ids", ids, "INT32"), ("attention_mask", np.ones((1, 3), np.bool_), "BOOL"),
                              ("token_type_ids", np.zeros((1, 3), np.int32), "INT32")):
        inp = httpclient.InferInput(name, [1, 3], kind)
        inp.set_data_from_numpy(value)
        inputs.append(inp)

    from_half = triton.infer("mlp", [half], headers=_headers(served)).as_numpy("y")
    from_float = httpx.post(f"{served.agent.url}/v1/models/mlp/infer", json={"inputs": x.astype(np.float32).tolist()},
                            headers=_headers(served)).json()["outputs"]["y"]
    typed = triton.infer("minilm", inputs, headers=_headers(served)).as_numpy("embedding")
    as_int64 = triton.infer("minilm", _token_inputs(ids.astype(np.int64), np.ones((1, 3), np.int64)),
                            headers=_headers(served)).as_numpy("embedding")
    floats = httpclient.InferInput("input_ids", [1, 3], "FP32")
    floats.set_data_from_numpy(ids.astype(np.float32))

    np.testing.assert_allclose(from_half, np.asarray(from_float), rtol=1e-6)
    np.testing.assert_allclose(typed, as_int64, rtol=1e-6)
    with pytest.raises(InferenceServerException, match="dtype float32; the model wants int64"):
        triton.infer("minilm", [floats, *inputs[1:]], headers=_headers(served))
