from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeml.bundle import SigningKey, generate_key
from tests.support.tiny_models import tiny_cnn, tiny_mlp

# builds in tests measure for a few milliseconds only: timings are the benchmark script's job
FAST = {"benchmark_seconds": 0.05, "progress": False}


@pytest.fixture
def default_key() -> SigningKey:
    """The user's default signing key, as `edgeml keys generate` creates it (isolated EDGEML_HOME)."""
    return generate_key()


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    return tiny_cnn(tmp_path / "cnn.onnx")


@pytest.fixture
def cnn_dynamic(tmp_path: Path) -> Path:
    return tiny_cnn(tmp_path / "cnn_dyn.onnx", batch="N")


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return tiny_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def cnn_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "cal.npz"
    np.savez(path, input=rng.random((24, 3, 16, 16), dtype=np.float32))
    return path
