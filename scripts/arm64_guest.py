"""Runs INSIDE the emulated arm64 userland (scripts/arm64_env.sh): the guest half of tests/arm64 and
scripts/bench_arm64.py. Only edgeml and its runtime dependencies are importable there.

    python arm64_guest.py probe
    python arm64_guest.py infer BUNDLE TRUSTED_KEY.pub INPUT.npz OUTPUT.npz [--repeat N] [--threads N] [--probe]

Each command prints one JSON document on stdout; arrays travel through .npz files. ``--probe`` adds the
host probe to ``infer``'s answer (one emulated start-up, 5-15 s, instead of two).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def probe() -> dict[str, Any]:
    from edgeml.runtimes.probe import probe_host

    return {"machine": platform.machine(), "host": probe_host().to_json()}


def infer(bundle: Path, key: Path, inputs: Path, output: Path, repeat: int, threads: int) -> dict[str, Any]:
    import edgeml
    from edgeml.bundle.keys import TrustStore

    start = time.perf_counter()
    model = edgeml.load(bundle, trust=TrustStore.from_paths([key]), num_threads=threads)
    load_s = time.perf_counter() - start
    # The bundle's smoke sample was computed on x86 when it was built: passing it here is already an
    # x86-vs-arm64 comparison at the bundle's own tolerance.
    model.smoke_test()
    with np.load(inputs) as f:
        feeds = {k: f[k] for k in f.files}
    outputs = model.predict(feeds)
    times_ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        model.predict(feeds)
        times_ms.append((time.perf_counter() - t) * 1000)
    np.savez(output, **outputs)  # type: ignore[arg-type]
    described = model.describe()
    model.close()
    return {"machine": platform.machine(), "model": described, "load_s": load_s, "times_ms": times_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arm64_guest")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe")
    p = sub.add_parser("infer")
    p.add_argument("bundle", type=Path)
    p.add_argument("key", type=Path)
    p.add_argument("inputs", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--repeat", type=int, default=0, help="extra timed runs after the first")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0: the runtime's default)")
    p.add_argument("--probe", action="store_true", help="also report the host probe")
    args = parser.parse_args(argv)
    if args.command == "probe":
        result = probe()
    else:
        result = infer(args.bundle, args.key, args.inputs, args.output, args.repeat, args.threads)
        if args.probe:
            result["probe"] = probe()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
