"""edgeml on ARM64: the aarch64 builds of Python, numpy, ONNX Runtime and LiteRT, run under qemu-user.

Given an arm64-cpu bundle built on x86, when the arm64 userland loads it (in process and through the
agent daemon), then it runs on the arm64 runtimes and matches the x86 outputs; a tampered bundle is
refused there as it is on x86. Emulation is slow (each guest process pays 5-15 s of start-up), so the
tests are few and each checks a whole path.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import zstandard

from tests.arm64.conftest import GUEST, BundleCase, assert_close_to_x86, guest, guest_ok
from tests.support.services import free_port

pytestmark = [pytest.mark.arm64, pytest.mark.slow]

DAEMON_START_TIMEOUT_S = 240     # emulated start-up + bundle verification + smoke test of a real model


def _infer_in_guest(arm64_python: Path, case: BundleCase, out: Path, *flags: str, home: Path | None = None) -> dict:
    result = json.loads(guest_ok(arm64_python, GUEST, "infer", case.bundle, case.key, case.inputs, out, *flags,
                                 home=home))
    with np.load(out) as f:
        result["outputs"] = {k: f[k] for k in f.files}
    return result


@pytest.fixture(scope="module")
def ocr_cls_run(arm64_python: Path, ocr_cls_case: BundleCase, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One emulated process loads the ONNX bundle and probes the host (start-up is the expensive part)."""
    tmp = tmp_path_factory.mktemp("ocr-run")
    return _infer_in_guest(arm64_python, ocr_cls_case, tmp / "out.npz", "--probe", home=tmp / "home")


def test_host_probe_reports_aarch64(ocr_cls_run: dict) -> None:
    probe = ocr_cls_run["probe"]

    assert probe["machine"] == "aarch64"
    host = probe["host"]
    assert host["arch"] == "aarch64"
    assert {"fp", "asimd"} <= set(host["cpu_features"]), host["cpu_features"]   # ARM 'Features', not x86 'flags'
    assert "avx2" not in host["cpu_features"]
    assert set(host["runtimes"]) >= {"onnxruntime", "litert"}, host["runtimes"]


def test_onnxruntime_bundle_matches_x86(ocr_cls_run: dict, ocr_cls_case: BundleCase) -> None:
    assert ocr_cls_run["machine"] == "aarch64"
    model = ocr_cls_run["model"]
    assert (model["target"], model["runtime"], model["device"], model["fallback"]) == (
        "arm64-cpu", "onnxruntime", "CPUExecutionProvider", False)
    assert_close_to_x86(ocr_cls_run["outputs"], ocr_cls_case.x86_outputs)


def test_litert_bundle_matches_x86(arm64_python: Path, face_case: BundleCase, tmp_path: Path) -> None:
    result = _infer_in_guest(arm64_python, face_case, tmp_path / "out.npz")

    assert result["machine"] == "aarch64"
    model = result["model"]
    assert (model["target"], model["runtime"], model["fallback"]) == ("arm64-cpu", "litert", False)
    assert_close_to_x86(result["outputs"], face_case.x86_outputs)


def _tamper(bundle: Path, out: Path) -> Path:
    """Flip one byte of the model inside a signed bundle; the manifest and signature stay as signed."""
    raw = zstandard.ZstdDecompressor().stream_reader(bundle.read_bytes()).read()
    dst = io.BytesIO()
    with (tarfile.open(fileobj=io.BytesIO(raw)) as src,
          tarfile.open(fileobj=dst, mode="w", format=tarfile.PAX_FORMAT) as tar):
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith("model/"):
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            tar.addfile(member, io.BytesIO(data))
    out.write_bytes(dst.getvalue())
    return out


def test_tampered_bundle_is_refused(arm64_python: Path, ocr_cls_case: BundleCase, tmp_path: Path) -> None:
    tampered = _tamper(ocr_cls_case.bundle, tmp_path / "tampered.edgepkg")
    data = tmp_path / "data"

    proc = guest(arm64_python, "-m", "edgeml_agent.cli", "install", tampered, "--data-dir", data,
                 "--trust", ocr_cls_case.key)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error:" in proc.stderr and "model/" in proc.stderr, proc.stderr   # names the altered file
    assert "Traceback" not in proc.stderr
    installed = [p for p in data.rglob("*") if p.is_file()] if data.exists() else []
    assert not any(p.suffix in (".onnx", ".tflite") for p in installed), installed


def _wait_healthy(client: httpx.Client, daemon: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            pytest.fail(f"the arm64 agent exited {daemon.returncode} while starting:\n{log.read_text()[-4000:]}")
        try:
            resp = client.get("/healthz")
            if resp.status_code == 200:
                return resp.json()
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    pytest.fail(f"the arm64 agent did not answer /healthz within {DAEMON_START_TIMEOUT_S} s:\n"
                f"{log.read_text()[-4000:]}")


def test_agent_daemon_serves_http_to_the_host(arm64_python: Path, ocr_cls_case: BundleCase, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(f'data_dir = "data"\ntrusted_keys = ["{ocr_cls_case.key}"]\n\n'
                      f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    installed = guest_ok(arm64_python, "-m", "edgeml_agent.cli", "install", ocr_cls_case.bundle, "--config", config)
    assert "ocr-cls@1.0.0 installed and current" in installed

    log = tmp_path / "agent.log"
    with open(log, "wb") as log_file:
        daemon = subprocess.Popen([str(arm64_python), "-m", "edgeml_agent.cli", "run", "--config", str(config)],
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            health = _wait_healthy(client, daemon, log)
            assert health["status"] == "ok" and "ocr-cls" in health["models"], health

            described = client.get("/v1/models/ocr-cls").json()
            assert (described["runtime"], described["target"], described["fallback"]) == (
                "onnxruntime", "arm64-cpu", False), described

            body = ocr_cls_case.inputs.read_bytes()
            resp = client.post("/v1/models/ocr-cls/infer", content=body,
                               headers={"Content-Type": "application/x-npz", "Accept": "application/x-npz"})
            assert resp.status_code == 200, resp.text
            with np.load(io.BytesIO(resp.content)) as f:
                outputs = {k: f[k] for k in f.files}
            assert_close_to_x86(outputs, ocr_cls_case.x86_outputs)

            bad = client.post("/v1/models/ocr-cls/infer", json={"inputs": {"x": [[1.0, 2.0]]}})
            assert bad.status_code == 400 and "shape" in bad.json()["error"], bad.text

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0, log.read_text()[-4000:]
        assert "listening on http://127.0.0.1" in log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
