"""Running candidates on this host, the way a device would: through :func:`edgeml.runtimes.open_model`
with the target's providers/devices where this host has them, and the CPU where it does not (an Intel
NPU build is evaluated on OpenVINO's CPU plugin here; a Jetson build on ONNX Runtime's CPU EP). Every
such substitution is returned as a note so the report can say what was really measured.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

import numpy as np

from edgeml.arrays import Array, FloatArray
from edgeml.compiler.data import SampleSet
from edgeml.errors import RuntimeBackendError
from edgeml.jsontypes import JSONDict, as_dict, as_float, as_int, as_str, as_strs, to_json
from edgeml.runtimes import Backend, BackendOptions, open_model
from edgeml.targets import TargetProfile

DEFAULT_THREADS = 2
BLOCK_SECONDS = 0.1


@cache
def _ort_available() -> frozenset[str]:
    import onnxruntime

    return frozenset(onnxruntime.get_available_providers())


@cache
def _openvino_devices() -> tuple[str, ...]:
    from edgeml.runtimes.openvino_backend import import_openvino

    return tuple(import_openvino().Core().available_devices)


def host_options(target: TargetProfile, runtime: str,
                 threads: int = DEFAULT_THREADS) -> tuple[BackendOptions, list[str]]:
    """Backend options for running ``target``'s ``runtime`` on this host, and what had to be substituted."""
    opts = target.options(runtime)
    notes: list[str] = []
    if runtime == "onnxruntime":
        wanted = list(opts.providers) or ["CPUExecutionProvider"]
        usable = [p for p in wanted if p in _ort_available()] or ["CPUExecutionProvider"]
        if usable[0] != wanted[0]:
            notes.append(f"{target.id}: measured with {usable[0]} on this host (the device uses {wanted[0]})")
        provider_options = {p: dict(opts.provider_options.get(p, {})) for p in usable if p in opts.provider_options}
        return BackendOptions(providers=tuple(usable), provider_options=provider_options, num_threads=threads), notes
    if runtime == "openvino":
        wanted_dev = opts.device or "CPU"
        candidates = [wanted_dev, *opts.fallback_devices, "CPU"]
        device = next(d for d in candidates if d == "CPU" or d in _openvino_devices())
        if device != wanted_dev:
            notes.append(f"{target.id}: measured on OpenVINO {device} on this host (the device uses {wanted_dev})")
        props = dict(opts.properties) if device == wanted_dev else {
            k: v for k, v in opts.properties.items() if k in ("PERFORMANCE_HINT",)}
        return BackendOptions(device=device, properties=props, num_threads=threads), notes
    return BackendOptions(num_threads=threads or opts.num_threads), notes


def run_outputs(model: Path, runtime: str, options: BackendOptions, samples: SampleSet) -> dict[str, Array]:
    """Every output over every sample, concatenated along the first axis."""
    collected: dict[str, list[Array]] = {}
    with open_model(model, runtime, options) as backend:
        for feed in samples:
            for name, value in backend.run(backend.check_feeds(feed)).items():
                collected.setdefault(name, []).append(np.asarray(value))
    return {n: np.concatenate(v) if v[0].ndim else np.stack(v) for n, v in collected.items()}


class _RssSampler:
    """Peak resident memory of this process while a model loads and runs (polled: the kernel's own
    ru_maxrss is a process-lifetime peak and would include earlier candidates)."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


Baseline = tuple[Path, str, BackendOptions]   # (model, runtime, options) a candidate is timed against


def measure(model: Path, runtime: str, options: BackendOptions, feed: Mapping[str, Array], *,
            seconds: float = 2.0, warmup: int = 5, max_iters: int = 1000, min_iters: int = 10,
            baseline: Baseline | None = None, progress: Callable[[int, int], None] | None = None) -> JSONDict:
    """Latency percentiles, throughput, load time and peak memory of one model on this host.

    Measured in a fresh Python process: peak resident memory then belongs to this model alone (in the
    build process, earlier candidates' arenas and thread pools would hide or inflate it), and timings
    are not disturbed by whatever else the build holds. ``peak_rss_mb`` is the child's peak resident
    set growth while the model loads and warms up; ``process_peak_rss_mb`` its whole peak.

    With ``baseline``, the child also loads that model and alternates one baseline run with one
    candidate run, so both are timed under the same load: ``speedup`` (baseline p50 / candidate p50)
    stays meaningful on a busy machine where two separate measurements minutes apart would not be.
    """
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="edgeml-bench-") as tmp:
        work = Path(tmp)
        np.savez(work / "feed.npz", **dict(feed))  # type: ignore[arg-type]
        job: JSONDict = {
            "model": str(model), "runtime": runtime, "feed": str(work / "feed.npz"),
            "options": _options_json(options), "seconds": seconds, "warmup": warmup,
            "max_iters": max_iters, "min_iters": min_iters, "baseline": None}
        if baseline is not None:
            job["baseline"] = {"model": str(baseline[0]), "runtime": baseline[1], "options": _options_json(baseline[2])}
        (work / "job.json").write_text(json.dumps(job))
        # stderr goes to a file: a chatty runtime filling a pipe nobody reads would block the child
        with open(work / "stderr.txt", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "edgeml.compiler.benchproc", str(work / "job.json")],
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            result: JSONDict | None = None
            assert proc.stdout is not None
            for line in proc.stdout:
                kind, _, payload = line.strip().partition(" ")
                if kind == "progress" and progress:
                    done, total = payload.split()
                    progress(int(done), int(total))
                elif kind == "result":
                    result = json.loads(payload)
            proc.wait()
        stderr = (work / "stderr.txt").read_text(errors="replace")
    if result is None or "error" in result:
        detail = (result or {}).get("error") or (stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeBackendError(f"benchmarking {model} on {runtime} failed: {detail}")
    return result


def _options_json(o: BackendOptions) -> JSONDict:
    return {"providers": list(o.providers), "provider_options": to_json(o.provider_options),
            "device": o.device, "properties": to_json(o.properties), "num_threads": o.num_threads,
            "cache_dir": str(o.cache_dir) if o.cache_dir else None}


def options_from_json(data: JSONDict) -> BackendOptions:
    device, cache = data["device"], data["cache_dir"]
    return BackendOptions(providers=tuple(as_strs(data["providers"])),
                          provider_options={k: as_dict(v) for k, v in as_dict(data["provider_options"]).items()},
                          device=None if device is None else as_str(device), properties=as_dict(data["properties"]),
                          num_threads=as_int(data["num_threads"]),
                          cache_dir=Path(as_str(cache)) if cache else None)


def measure_here(model: Path, runtime: str, options: BackendOptions, feed: Mapping[str, Array], *,
                 seconds: float, warmup: int, max_iters: int, min_iters: int, baseline: Baseline | None = None,
                 progress: Callable[[int, int], None] | None = None) -> JSONDict:
    """The measurement itself, in the calling process (the benchmark child runs this)."""
    backends = []
    try:
        with _RssSampler() as rss:
            t0 = time.perf_counter()
            backend = open_model(model, runtime, options)
            backends.append(backend)
            load_ms = (time.perf_counter() - t0) * 1000
            cand_feed = backend.check_feeds(feed)
            for _ in range(warmup):
                backend.run(cand_feed)
        # memory is the candidate's alone: the baseline loads after the sampler stopped
        runners = [(backend, cand_feed)]
        if baseline is not None:
            base = open_model(*baseline)
            backends.append(base)
            base_feed = base.check_feeds(feed)
            for _ in range(warmup):
                base.run(base_feed)
            runners.append((base, base_feed))
        times = _timed_runs(runners, seconds=seconds, max_iters=max_iters, min_iters=min_iters, progress=progress)
        device = backend.device
    finally:
        for b in backends:
            b.close()
    if progress:
        progress(len(times[0]), len(times[0]))
    result = _stats(np.asarray(times[0]) * 1000)
    result.update({
        "runtime": runtime, "device": device, "threads": options.num_threads, "load_ms": round(load_ms, 2),
        "peak_rss_mb": round((rss.peak - rss.baseline) / 2**20, 2), "process_peak_rss_mb": round(rss.peak / 2**20, 2),
    })
    if baseline is not None:
        paired = _stats(np.asarray(times[1]) * 1000)
        result["paired_baseline"] = {"model": str(baseline[0]), "runtime": baseline[1],
                                     **{k: paired[k] for k in ("p50_ms", "p90_ms", "p99_ms")}}
        result["speedup"] = round(as_float(paired["p50_ms"]) / max(as_float(result["p50_ms"]), 1e-9), 3)
    return result


def _timed_runs(runners: list[tuple[Backend, dict[str, Array]]], *, seconds: float, max_iters: int, min_iters: int,
                progress: Callable[[int, int], None] | None) -> list[list[float]]:
    """Seconds per run of each (backend, feed), the runners taking turns until time or iterations run out."""
    times: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + seconds
    expected = max_iters
    block = 1
    while len(times[0]) < max_iters and (len(times[0]) < min_iters or time.perf_counter() < deadline):
        # alternate in blocks of ~BLOCK_SECONDS, not single runs: a runtime's worker threads keep
        # spinning for a moment after each run and would steal the cores from the other one
        for (b, f), ts in zip(runners, times, strict=True):
            b.run(f)  # first run after a switch: not timed
            for _ in range(block):
                start = time.perf_counter()
                b.run(f)
                ts.append(time.perf_counter() - start)
        n = len(times[0])
        per = sum(sum(ts) for ts in times) / n
        block = max(1, min(50, int(BLOCK_SECONDS / max(per, 1e-9))))
        if expected == max_iters and n >= min_iters:
            # estimate the total once, so a progress bar has a meaningful end
            expected = max(min_iters, min(max_iters, int(seconds / max(per, 1e-9))))
        if progress:
            progress(min(n, expected), expected)
    return times


def _stats(ms: FloatArray) -> JSONDict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4), "mean_ms": round(float(ms.mean()), 4),
            "throughput_ips": round(float(1000 / ms.mean()), 2), "iterations": len(ms)}


@cache
def host_info() -> JSONDict:
    info: JSONDict = {"machine": platform.machine(), "system": platform.system(),
                            "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    for module in ("onnxruntime", "openvino"):
        try:
            from importlib.metadata import version

            info[module] = version(module)
        except Exception:  # not installed: fine, just not reported
            pass
    return info
