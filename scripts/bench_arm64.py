"""Emulated arm64 vs native x86 latency of the same bundles, and the arm64 environment's build time.

    .venv/bin/python scripts/bench_arm64.py [--repeat 5] [--threads 1] [--fresh]

--fresh also times scripts/arm64_env.sh from nothing (a temporary EDGEML_ARM64_ROOT and no pip cache:
every .deb and wheel is downloaded again) with its phases, then again warm on that root. Without it
only the warm reuse of the normal cache is timed. Both sides run the same bundle with the same thread
count (default 1, so a busy host's scheduler does not blur the ratio). The slowdown is emulation:
qemu-user translates every aarch64 instruction and runs NEON floating point through soft-float helpers;
the outputs still match x86 (last column, and tests/arm64).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeml.bundle import SigningKey  # noqa: E402
from edgeml.runtimes import BackendOptions, open_model  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.real_models import real_model  # noqa: E402

ENV_SCRIPT = REPO / "scripts" / "arm64_env.sh"
GUEST = REPO / "scripts" / "arm64_guest.py"

# (label, real model, runtime, input name -> shape, value range)
CASES = [
    ("ppocr-cls 2x3x48x192", "ppocr-cls", "onnxruntime", {"x": (2, 3, 48, 192)}),
    ("face-detection 128x128", "face-detection", "litert", {"input": (1, 128, 128, 3)}),
    ("pose-detection 224x224", "pose-detection", "litert", {"input_1": (1, 224, 224, 3)}),
]


def build_env(env: dict[str, str]) -> tuple[float, Path, list[str]]:
    """Run arm64_env.sh: its wall time, the python wrapper it prints and its timestamped phase lines."""
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(ENV_SCRIPT)], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"arm64_env.sh failed:\n{proc.stderr}")
    phases = [line for line in proc.stderr.splitlines() if line.startswith("[arm64_env")]
    return seconds, Path(proc.stdout.strip().splitlines()[-1]), phases


def _what_changed(phases: list[str]) -> str:
    if any("building userland" in line for line in phases):
        return " (recipe changed: rebuilt)"
    if any("installing edgeml" in line for line in phases):
        return " (edgeml sources changed)"
    return " (nothing changed)"


def native_ms(model: Path, runtime: str, feeds: dict[str, np.ndarray], repeat: int, threads: int) -> list[float]:
    with open_model(model, runtime, BackendOptions(num_threads=threads)) as backend:
        backend.run(feeds)  # warm-up, as the guest's first (untimed) run
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            backend.run(feeds)
            times.append((time.perf_counter() - t) * 1000)
    return times


def startup_s(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per model and side (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads on both sides (0: default)")
    parser.add_argument("--fresh", action="store_true", help="also time a from-nothing build of the environment")
    args = parser.parse_args()

    env_rows: list[tuple[str, float]] = []
    fresh_phases: list[str] = []
    base_env = {**os.environ, "EDGEML_ARM64_HOST_PYTHON": sys.executable}
    if args.fresh:
        with tempfile.TemporaryDirectory(prefix="edgeml-arm64-fresh-") as root:
            fresh_env = {**base_env, "EDGEML_ARM64_ROOT": root, "PIP_NO_CACHE_DIR": "1"}
            seconds, _, fresh_phases = build_env(fresh_env)
            env_rows.append(("fresh (empty cache, no pip cache)", seconds))
            seconds, _, phases = build_env(fresh_env)
            env_rows.append((f"warm, same root{_what_changed(phases)}", seconds))
    for _ in range(2):  # the second run shows the no-change case even when the tree moved meanwhile
        seconds, python, phases = build_env(base_env)
        env_rows.append((f"warm, default cache{_what_changed(phases)}", seconds))

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeml-arm64-bench-") as tmp_name:
        tmp = Path(tmp_name)
        guest_env = {**base_env, "EDGEML_HOME": str(tmp / "home")}
        for label, interpreter in (("native", sys.executable), ("emulated", str(python))):
            env_rows.append((f"python -c 'import edgeml' {label}",
                             startup_s([interpreter, "-c", "import edgeml"], guest_env)))
        key = SigningKey.generate()
        pub = tmp / "builder.pub"
        pub.write_bytes(key.public_pem())
        rng = np.random.default_rng(0)
        for label, model_key, runtime, shapes in CASES:
            model = real_model(model_key)
            feeds = {name: rng.random(shape, dtype=np.float32) for name, shape in shapes.items()}
            inputs = tmp / f"{model_key}-in.npz"
            np.savez(inputs, **feeds)  # type: ignore[arg-type]  # numpy stub: **arrays vs allow_pickle
            bundle = make_bundle(tmp, key, model, name=model_key, target="arm64-cpu", runtime=runtime)
            native = native_ms(model, runtime, feeds, args.repeat, args.threads)
            proc = subprocess.run([str(python), str(GUEST), "infer", str(bundle), str(pub), str(inputs),
                                   str(tmp / f"{model_key}-out.npz"), "--repeat", str(args.repeat),
                                   "--threads", str(args.threads)],
                                  env=guest_env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"guest run of {model_key} failed:\n{proc.stderr}")
            result = json.loads(proc.stdout)
            emulated = result["times_ms"]
            with np.load(tmp / f"{model_key}-out.npz") as f, open_model(model, runtime) as backend:
                want = backend.run(feeds)
                diff = max(float(np.abs(f[k] - want[k]).max()) for k in want)
            rows.append((label, runtime, statistics.median(native), statistics.median(emulated),
                         result["load_s"], diff))

    print(f"\narm64 environment (scripts/arm64_env.sh; {os.cpu_count()} host cores)")
    print(f"{'step':<48} {'seconds':>8}")
    for name, seconds in env_rows:
        print(f"{name:<48} {seconds:8.1f}")
    if fresh_phases:
        print("phases of the fresh build:")
        print("\n".join(f"  {line}" for line in fresh_phases))
    threads = args.threads or "runtime default"
    print(f"\nlatency, median of {args.repeat} runs after one warm-up ({threads} thread(s) on both sides)")
    print(f"{'model':<26} {'runtime':<12} {'x86 ms':>9} {'arm64-emu ms':>13} {'slowdown':>9} "
          f"{'emu load s':>11} {'max |diff|':>11}")
    for label, runtime, nat, emu, load_s, diff in rows:
        print(f"{label:<26} {runtime:<12} {nat:9.2f} {emu:13.1f} {emu / nat:8.0f}x {load_s:11.1f} {diff:11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
