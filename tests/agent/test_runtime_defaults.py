"""The agent's thread defaults (issue 16: one intra-op thread, no spinning, chosen by
scripts/bench_agent.py --colocated) reach the real onnxruntime session, and the config overrides them."""

from __future__ import annotations

from pathlib import Path

from edgeml.bundle import SigningKey
from edgeml_agent.config import parse_config
from edgeml_agent.services import ModelLoader
from edgeml_agent.store import Store
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp

SPINNING = "session.intra_op.allow_spinning"


def _session_options(tmp_path: Path, runtime_toml: str):  # type: ignore[no-untyped-def]
    key = SigningKey.generate()
    (tmp_path / "k.pub").write_bytes(key.public_pem())
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "trusted_keys": [str(tmp_path / "k.pub")],
                        "runtime": runtime_toml}, base_dir=tmp_path)
    store = Store(cfg.data_dir, {key.key_id: key.public_key})
    store.install(make_bundle(tmp_path, key, tiny_mlp(tmp_path / "m.onnx")))
    loaded = ModelLoader(cfg, store)("m")
    try:
        return loaded.model.backend.session.get_session_options()  # type: ignore[attr-defined]
    finally:
        loaded.model.close()


def test_default_config_gives_the_session_one_thread_and_no_spinning(tmp_path: Path) -> None:
    options = _session_options(tmp_path, {})  # type: ignore[arg-type]
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry(SPINNING) == "0"


def test_config_overrides_threads_and_spinning(tmp_path: Path) -> None:
    options = _session_options(tmp_path, {"num_threads": 2, "allow_spinning": True})  # type: ignore[arg-type]
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry(SPINNING) == "1"
