"""``bench_agent.py --colocated``: the agent's latency with its client on the same cores, across thread
settings, to choose the agent's defaults (issue 16, point 5).

A device runs the agent beside the program that calls it (and often a camera pipeline): ORT's default
(one intra-op thread per core, spinning while waiting for work) then competes with the caller for
the same 2 cores. For each setting — intra-op threads 0 (ORT's default) / 1 / 2, spinning on / off, and
the agent's shipped defaults — one real ``edgeml-agent run`` serves a tiny model and a real one (PP-OCR
text-direction classifier), and one closed-loop client in this process (one request at a time, as a
camera loop calls it) times ``iters`` requests per model. ``--camera-load F`` adds a process that
burns F of one core in 33 ms frames (a 30 fps pipeline). Settings are run in rounds (interleaved, to
spread the noise of a shared machine); each cell is the best round's p50 (and the median of rounds).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CAMERA = r"""
import sys, time
load = float(sys.argv[1]); frame = 1 / 30
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < load * frame:
        pass
    time.sleep(max(0.0, frame - (time.perf_counter() - start)))
"""


@dataclass(frozen=True)
class Setting:
    label: str
    runtime_toml: str     # the [runtime] lines of the agent's config


SETTINGS = [Setting("agent defaults", "")] + [
    Setting(f"threads={t} spinning={'on' if spin else 'off'}",
            f"num_threads = {t}\nallow_spinning = {str(spin).lower()}\n")
    for t in (0, 1, 2) for spin in (True, False)
]


def _models(tmp: Path, key, make_bundle, store) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    from tests.support.real_models import real_model
    from tests.support.tiny_models import tiny_mlp

    rng = np.random.default_rng(0)
    tiny = tiny_mlp(tmp / "tiny.onnx", features=1024, hidden=4096, outputs=1024)
    store.install(make_bundle(tmp, key, tiny, name="tiny"))
    store.install(make_bundle(tmp, key, real_model("ppocr-cls"), name="ocr-cls"))
    return {"tiny": rng.random((1, 1024), dtype=np.float32), "ocr-cls": rng.random((1, 3, 48, 192), dtype=np.float32)}


def _measure(port: int, name: str, x: np.ndarray, iters: int, npy_bytes, headers, client_cls) -> float:  # type: ignore[no-untyped-def]
    client = client_cls(port, "POST", f"/v1/models/{name}/infer", npy_bytes(x), headers)
    try:
        samples = []
        for i in range(iters + 30):
            t0 = time.perf_counter()
            status, _, data = client.call()
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
            if i >= 30:
                samples.append(time.perf_counter() - t0)
    finally:
        client.close()
    return float(np.percentile(samples, 50))


def run(args, *, agent_cls, key, make_bundle, store_cls, trust, npy_bytes, headers, client_cls, free_port) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeml-bench-colocated-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "k.pub").write_bytes(key.public_pem())
        inputs = _models(tmp, key, make_bundle, store_cls(tmp / "data", trust))
        camera = (subprocess.Popen([sys.executable, "-c", CAMERA, str(args.camera_load)])
                  if args.camera_load > 0 else None)
        p50s: dict[tuple[str, str], list[float]] = {}
        try:
            for _ in range(args.rounds):
                for setting in SETTINGS:
                    port = free_port()
                    config = tmp / "agent.toml"
                    config.write_text(f'data_dir = "{tmp / "data"}"\ntrusted_keys = ["{tmp / "k.pub"}"]\n'
                                      f"[server]\nport = {port}\n[runtime]\n{setting.runtime_toml}")
                    agent = agent_cls(config, port, tmp / "agent.log")
                    try:
                        for name, x in inputs.items():
                            p50 = _measure(port, name, x, args.iters, npy_bytes, headers, client_cls)
                            p50s.setdefault((name, setting.label), []).append(p50)
                    finally:
                        agent.stop()
        finally:
            if camera is not None:
                camera.kill()
                camera.wait()
    _print(p50s, list(inputs), args)


def _print(p50s: dict[tuple[str, str], list[float]], names: list[str], args) -> None:  # type: ignore[no-untyped-def]
    # Other programs on a shared machine only ever add time: the best round is the setting's own cost,
    # the median shows how much the noise moved it.
    best_round = {k: min(v) * 1e3 for k, v in p50s.items()}
    median = {k: statistics.median(v) * 1e3 for k, v in p50s.items()}
    best = {n: min(v for (m, _), v in best_round.items() if m == n) for n in names}
    print(f"\nagent p50 with a co-located closed-loop client ({os.cpu_count()} cpus, camera load "
          f"{args.camera_load:.0%} of a core, {args.rounds} rounds x {args.iters} requests, "
          f"load average {os.getloadavg()[0]:.1f}); p50 of the best round (median of rounds)")
    header = f"{'setting':<26}" + "".join(f"{n + ' p50':>24}{'vs best':>9}" for n in names)
    print(header)
    print("-" * len(header))
    for setting in SETTINGS:
        row = f"{setting.label:<26}"
        for n in names:
            v, m = best_round[(n, setting.label)], median[(n, setting.label)]
            row += f"{v:>10.2f} ms ({m:6.2f} ms){(v / best[n] - 1) * 100:>+8.0f}%"
        print(row)
