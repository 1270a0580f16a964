"""The data directory: verified versions side by side, an atomic `current` pointer per model."""

from __future__ import annotations

import pytest

from edgeml.bundle import SigningKey, TrustStore
from edgeml.errors import BundleError, ConfigError, IntegrityError, SignatureError
from edgeml_agent.store import Store
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_cnn, tiny_mlp


@pytest.fixture
def models(tmp_path):
    return {"mlp": tiny_mlp(tmp_path / "mlp.onnx"), "cnn": tiny_cnn(tmp_path / "cnn.onnx")}


def test_install_two_versions_and_switch(tmp_path, signing_key, trust, models):
    store = Store(tmp_path / "data", trust)
    v1 = make_bundle(tmp_path, signing_key, models["mlp"], name="mlp", version="1.0.0")
    v2 = make_bundle(tmp_path, signing_key, models["mlp"], name="mlp", version="1.1.0")
    assert store.install(v1).manifest.version == "1.0.0"
    assert store.current("mlp") == "1.0.0"
    store.install(v2, activate=False)
    assert store.current("mlp") == "1.0.0" and store.versions("mlp") == ["1.0.0", "1.1.0"]
    store.set_current("mlp", "1.1.0")
    assert store.current("mlp") == "1.1.0"
    assert store.open("mlp").manifest.version == "1.1.0"
    assert store.open("mlp", "1.0.0").root == tmp_path / "data/versions/mlp/1.0.0"
    # the pointer is a plain file replaced by rename: no temporary files are left behind
    assert sorted(p.name for p in (tmp_path / "data/versions/mlp").iterdir()) == ["1.0.0", "1.1.0", "current"]
    with pytest.raises(BundleError, match="current version"):
        store.remove("mlp", "1.1.0")
    store.remove("mlp", "1.0.0")
    assert store.versions("mlp") == ["1.1.0"]


def test_several_models_side_by_side(tmp_path, signing_key, trust, models):
    store = Store(tmp_path / "data", trust)
    for name, model in models.items():
        store.install(make_bundle(tmp_path, signing_key, model, name=name))
    assert store.models() == ["cnn", "mlp"]


def test_reinstall_is_idempotent_but_a_different_bundle_with_the_same_version_is_refused(
        tmp_path, signing_key, trust, models):
    store = Store(tmp_path / "data", trust)
    bundle = make_bundle(tmp_path / "a.edgepkg", signing_key, models["mlp"], name="mlp")
    store.install(bundle)
    store.install(bundle)
    other = make_bundle(tmp_path / "b.edgepkg", signing_key, models["cnn"], name="mlp")
    with pytest.raises(BundleError, match="already installed from a different bundle"):
        store.install(other)


def test_untrusted_bundle_installs_nothing(tmp_path, signing_key, models):
    store = Store(tmp_path / "data", TrustStore([SigningKey.generate().public_key]))
    bundle = make_bundle(tmp_path, signing_key, models["mlp"], name="mlp")
    with pytest.raises(SignatureError):
        store.install(bundle)
    assert store.models() == [] and store.versions("mlp") == []
    with pytest.raises(ConfigError, match="no trusted keys"):
        Store(tmp_path / "data", TrustStore()).install(bundle)


def test_open_reverifies_files_on_disk(tmp_path, signing_key, trust, models):
    store = Store(tmp_path / "data", trust)
    store.install(make_bundle(tmp_path, signing_key, models["mlp"], name="mlp"))
    (store.path("mlp", "1.0.0") / "smoke/input.npz").write_bytes(b"changed")
    with pytest.raises(IntegrityError):
        store.open("mlp")
    with pytest.raises(BundleError, match="not installed"):
        store.open("nothing")
    with pytest.raises(BundleError, match="not usable as a directory name"):
        store.current("../etc")
