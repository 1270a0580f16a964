from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.bundle import SigningKey, TrustStore


@pytest.fixture(autouse=True)
def isolated_edgeml_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own EDGEML_HOME (keys, trusted keys, user targets); the build cache is
    shared per session so repeated builds stay fast."""
    home = tmp_path_factory.mktemp("edgeml-home")
    monkeypatch.setenv("EDGEML_HOME", str(home))
    monkeypatch.setenv("EDGEML_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgeml-cache"))
    monkeypatch.delenv("EDGEML_TARGETS_PATH", raising=False)
    return home


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def trust(signing_key: SigningKey) -> TrustStore:
    return TrustStore([signing_key.public_key])
