"""The emulated arm64 userland for these tests: built (or reused) once per session by scripts/arm64_env.sh.

When this host cannot emulate arm64 at all (no qemu-aarch64-static and no way to install it) the tests
skip locally and fail under CI=true (tests.support.services.require). When it could but the build
fails, that is a failure everywhere: the script's log is in the message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeml.bundle import SigningKey
from edgeml.runtimes import open_model
from tests.support.bundles import make_bundle
from tests.support.real_models import real_model
from tests.support.services import require

REPO = Path(__file__).resolve().parents[2]
ENV_SCRIPT = REPO / "scripts" / "arm64_env.sh"
GUEST = REPO / "scripts" / "arm64_guest.py"
ENV_BUILD_TIMEOUT_S = 900       # a fresh build takes ~1 minute; generous for slow mirrors
GUEST_TIMEOUT_S = 300           # emulated python + runtime import + a real model: 10-60 s here


def can_emulate() -> tuple[bool, str]:
    if shutil.which("qemu-aarch64-static"):
        return True, ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return True, ""  # the script installs qemu-user-static
    return False, ("no qemu-aarch64-static and no way to install it (needs root and apt-get): "
                   "install qemu-user-static to run the arm64 tests")


@pytest.fixture(scope="session")
def arm64_python() -> Path:
    """The wrapper that runs the arm64 python (``bin/python`` in the cache the script keeps)."""
    ok, why = can_emulate()
    require(ok, why)
    # The host side (pip cross-install, pyproject parsing) uses the interpreter running the tests.
    env = {**os.environ, "EDGEML_ARM64_HOST_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ENV_SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=ENV_BUILD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/arm64_env.sh failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    python = Path(proc.stdout.strip().splitlines()[-1])
    assert python.is_file(), f"arm64_env.sh printed {python!r}, which is not a file"
    return python


def guest(python: Path, *args: str | Path, timeout: float = GUEST_TIMEOUT_S,
          home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in the arm64 userland. The test's EDGEML_HOME goes along (the wrapper keeps
    EDGEML_* variables); ``home`` replaces it for fixtures wider than one test."""
    env = {**os.environ, **({"EDGEML_HOME": str(home), "EDGEML_CACHE_DIR": str(home / "cache")} if home else {})}
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def guest_ok(python: Path, *args: str | Path, timeout: float = GUEST_TIMEOUT_S, home: Path | None = None) -> str:
    proc = guest(python, *args, timeout=timeout, home=home)
    assert proc.returncode == 0, f"arm64 guest {args} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout


@dataclass(frozen=True)
class BundleCase:
    """An arm64-cpu bundle of a real model, one input sample and what x86 computes for it."""

    bundle: Path
    key: Path                 # the builder's public key (.pub)
    inputs: Path              # .npz
    x86_outputs: dict[str, np.ndarray]


def _case(out: Path, key: SigningKey, model: Path, name: str, runtime: str,
          inputs: dict[str, np.ndarray]) -> BundleCase:
    out.mkdir(parents=True, exist_ok=True)
    pub = out / "builder.pub"
    pub.write_bytes(key.public_pem())
    bundle = make_bundle(out, key, model, name=name, target="arm64-cpu", runtime=runtime)
    with open_model(model, runtime) as backend:
        x86 = backend.run(inputs)
    np.savez(out / "inputs.npz", **inputs)  # type: ignore[arg-type]
    return BundleCase(bundle, pub, out / "inputs.npz", x86)


@pytest.fixture(scope="session")
def builder_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="session")
def ocr_cls_case(tmp_path_factory: pytest.TempPathFactory, builder_key: SigningKey) -> BundleCase:
    """PP-OCR's text-direction classifier (ONNX): two 48x192 crops, the size it was trained on."""
    rng = np.random.default_rng(11)
    inputs = {"x": rng.random((2, 3, 48, 192), dtype=np.float32)}
    return _case(tmp_path_factory.mktemp("ocr-cls"), builder_key, real_model("ppocr-cls"), "ocr-cls",
                 "onnxruntime", inputs)


@pytest.fixture(scope="session")
def face_case(tmp_path_factory: pytest.TempPathFactory, builder_key: SigningKey) -> BundleCase:
    """MediaPipe's short-range face detector (.tflite, LiteRT)."""
    rng = np.random.default_rng(12)
    inputs = {"input": rng.random((1, 128, 128, 3), dtype=np.float32) * 2 - 1}
    return _case(tmp_path_factory.mktemp("face"), builder_key, real_model("face-detection"), "face",
                 "litert", inputs)


def assert_close_to_x86(arm: dict[str, np.ndarray], x86: dict[str, np.ndarray]) -> None:
    """THE TOLERANCE: every element within 1e-5 of the output's largest magnitude (about 100 float32
    ULPs at that scale). ARM NEON and x86 AVX2 kernels sum in different orders, so bit-equality is not
    expected; measured here: 5e-7 on PP-OCR cls probabilities, 6e-5 on face-detection regressors of
    magnitude 150. A wrong kernel, layout or dtype misses this by orders of magnitude."""
    assert set(arm) == set(x86), f"outputs differ: arm64 {sorted(arm)} vs x86 {sorted(x86)}"
    for name, want in x86.items():
        got = arm[name]
        assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype, want.shape)
        scale = float(np.abs(want).max()) or 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=f"output {name}")
