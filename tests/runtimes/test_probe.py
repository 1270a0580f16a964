"""Host probe: parsing of /proc and L4T files, caching, and what it reports on this host."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import pytest

from edgeml.runtimes.probe import (
    full_probe,
    parse_cpuinfo,
    parse_l4t,
    parse_meminfo,
    probe_from,
    probe_host,
    runtime_devices,
)

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp
CPU implementer\t: 0x41
"""
MEMINFO = "MemTotal:       16326552 kB\nMemFree:          512000 kB\nMemAvailable:   12000000 kB\n"
L4T = ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
       "DATE: Fri Jul 19 23:24:25 UTC 2024\n")


def test_parse_cpuinfo_reads_x86_flags_and_arm_features():
    model, flags = parse_cpuinfo(X86_CPUINFO)
    assert model == "AMD EPYC 7B13" and {"avx2", "fma"} <= flags
    _, features = parse_cpuinfo(ARM_CPUINFO)
    assert {"asimd", "asimddp", "fphp"} <= features and "avx2" not in features


def test_parse_meminfo_and_l4t():
    assert parse_meminfo(MEMINFO) == (15943, 11718)
    assert parse_l4t(L4T) == "R36 (release), REVISION: 3.0"
    assert parse_l4t("garbage") is None


def _fake_root(tmp_path: Path, *, jetson: bool) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(ARM_CPUINFO)
    (tmp_path / "proc/meminfo").write_text(MEMINFO)
    if jetson:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/nv_tegra_release").write_text(L4T)
        (tmp_path / "proc/device-tree").mkdir()
        (tmp_path / "proc/device-tree/compatible").write_bytes(b"nvidia,p3768-0000+p3767-0005\0nvidia,tegra234\0")
        lib = tmp_path / "usr/lib/aarch64-linux-gnu"
        lib.mkdir(parents=True)
        (lib / "libnvinfer.so.8.6.2").write_bytes(b"")
    return tmp_path


def test_probe_of_a_jetson_tree_finds_l4t_cuda_capability_and_tensorrt(tmp_path):
    host = probe_from(_fake_root(tmp_path, jetson=True))
    assert host.jetson_l4t == "R36 (release), REVISION: 3.0"
    assert host.cuda is True
    assert host.gpu_compute_capability == "8.7"       # tegra234 = Orin
    assert host.tensorrt_version == "8.6.2"
    assert "asimddp" in host.cpu_features
    assert host.memory_total_mb == 15943


def test_probe_of_a_plain_arm_board_has_no_gpu(tmp_path):
    host = probe_from(_fake_root(tmp_path, jetson=False))
    assert (host.cuda, host.jetson_l4t, host.gpu_compute_capability, host.tensorrt_version) == (False, None, None, None)


def test_probe_host_is_computed_once_and_frozen():
    host = probe_host()
    assert probe_host() is host
    with pytest.raises(dataclasses.FrozenInstanceError):
        host.arch = "mips"  # type: ignore[misc]
    assert host.arch == platform.machine()
    assert host.cpu_count >= 1 and host.memory_total_mb > 0
    assert set(host.runtimes) >= {"onnxruntime", "openvino", "litert"}


def test_runtime_devices_on_this_cpu_only_host():
    assert "CPUExecutionProvider" in runtime_devices("onnxruntime")
    assert "CPU" in runtime_devices("openvino")
    assert runtime_devices("litert") == ("CPU",)
    assert runtime_devices("tensorrt") == ()
    report = full_probe()
    assert report["devices"]["onnxruntime"] == list(runtime_devices("onnxruntime"))
    assert isinstance(report["cpu_features"], list)
