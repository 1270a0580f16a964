#!/usr/bin/env python
"""LiteRT against ONNX Runtime on real models, measured in one run on this host.

For each model and candidate: file size, p50/p90 latency (2 threads, batch 1) and agreement with the
ONNX FP32 original (arg-max agreement and cosine similarity over held-out real inputs):

- ppocr-cls (ONNX, PP-OCR direction classifier): ORT fp32, ORT int8 (static QDQ), LiteRT fp32/fp16/int8
  (onnx2tf in the isolated toolchain: run `edgeml toolchain install tflite` first);
- face-detection (.tflite, MediaPipe): LiteRT as shipped (fp16 weights) and LiteRT int8 (ai-edge-quantizer);
  its reference is the shipped model under LiteRT.

Inputs are real images from scikit-image (text crops, the astronaut's face). Usage:
    .venv/bin/python scripts/bench_litert.py [--seconds 3] [--models ppocr-cls,face-detection]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeml.compiler.data import SampleSet  # noqa: E402
from edgeml.compiler.hostrun import measure, run_outputs  # noqa: E402
from edgeml.compiler.modelinfo import digest_files  # noqa: E402
from edgeml.compiler.passes.base import Artifact, BuildContext, get_pass  # noqa: E402
from edgeml.compiler.passes.evaluate import output_metrics  # noqa: E402
from edgeml.runtimes import BackendOptions  # noqa: E402
from edgeml.targets import get_target  # noqa: E402
from tests.support.real_models import real_model  # noqa: E402
from tests.support.tflite_data import face_inputs, text_line_inputs  # noqa: E402

THREADS = 2


def _samples(name: str, array: np.ndarray) -> SampleSet:
    return SampleSet([{name: array[i:i + 1]} for i in range(len(array))])


def _agreement(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> tuple[float | None, float]:
    metrics = [output_metrics(ref[n], cand[n]) for n in ref]
    agreements = [m["agreement"] for m in metrics if m["agreement"] is not None]
    cosines = [m["cosine"] for m in metrics if m["cosine"] is not None]
    return (min(agreements) if agreements else None), min(cosines)


def _row(model: str, label: str, art: Artifact, runtime: str, ev: SampleSet, ref: dict[str, np.ndarray],
         seconds: float) -> dict[str, Any]:
    opts = BackendOptions(num_threads=THREADS)
    out = run_outputs(art.path, runtime, opts, ev)
    agreement, cosine = _agreement(ref, out)
    timing = measure(art.path, runtime, opts, ev[0], seconds=seconds)
    return {"model": model, "candidate": label, "size_kib": art.size_bytes / 1024, "p50_ms": timing["p50_ms"],
            "p90_ms": timing["p90_ms"], "agreement": agreement, "cosine": cosine}


def bench_onnx(key: str, input_name: str, data: np.ndarray, seconds: float, work: Path) -> list[dict[str, Any]]:
    src = real_model(key)
    cal, ev = _samples(input_name, data[:32]), _samples(input_name, data[32:])
    ctx = BuildContext(target=get_target("arm64-cpu"), workdir=work, calibration=cal, evaluation=ev,
                       log=lambda m: print("  " + m, file=sys.stderr))
    base = Artifact(src, "onnx", "fp32", digest_files([src]))
    ref = run_outputs(src, "onnxruntime", BackendOptions(num_threads=THREADS), ev)
    rows = [_row(key, "onnxruntime fp32", base.evolve(runtime="onnxruntime"), "onnxruntime", ev, ref, seconds)]
    builds = [("onnxruntime int8 (QDQ)", "onnxruntime", "quantize_ort", {"per_channel": False}),
              ("litert int8", "litert", "convert_tflite", {"precision": "int8"}),
              ("litert fp32", "litert", "convert_tflite", {"precision": "fp32"}),
              ("litert fp16", "litert", "convert_tflite", {"precision": "fp16"})]
    for label, runtime, pass_name, cfg in builds:
        ctx.workdir = work / label.replace(" ", "_").replace("(", "").replace(")", "")
        started = time.perf_counter()
        art = get_pass(pass_name)(**cfg).run(base, ctx)
        print(f"  built {label} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        rows.append(_row(key, label, art, runtime, ev, ref, seconds))
    return rows


def bench_tflite(key: str, input_name: str, data: np.ndarray, seconds: float, work: Path) -> list[dict[str, Any]]:
    src = real_model(key)
    cal, ev = _samples(input_name, data[:32]), _samples(input_name, data[32:])
    ctx = BuildContext(target=get_target("arm64-cpu"), workdir=work, calibration=cal, evaluation=ev)
    base = Artifact(src, "tflite", "fp16", digest_files([src]), runtime="litert")
    ref = run_outputs(src, "litert", BackendOptions(num_threads=THREADS), ev)
    rows = [_row(key, "litert as shipped (fp16 weights)", base, "litert", ev, ref, seconds)]
    art = get_pass("quantize_tflite")(mode="static").run(base, ctx)
    rows.append(_row(key, "litert int8 (ai-edge-quantizer)", art, "litert", ev, ref, seconds))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'model':16} {'candidate':34} {'size KiB':>9} {'p50 ms':>8} {'p90 ms':>8} "
              f"{'top-1 agree':>11} {'cosine':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        agree = "n/a" if r["agreement"] is None else f"{r['agreement']:.3f}"
        print(f"{r['model']:16} {r['candidate']:34} {r['size_kib']:9.1f} {r['p50_ms']:8.3f} {r['p90_ms']:8.3f} "
              f"{agree:>11} {r['cosine']:8.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per candidate")
    parser.add_argument("--models", default="ppocr-cls,face-detection")
    args = parser.parse_args()
    wanted = args.models.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-litert-") as tmp:
        work = Path(tmp)
        if "ppocr-cls" in wanted:
            rows += bench_onnx("ppocr-cls", "x", text_line_inputs(48), args.seconds, work / "ppocr")
        if "face-detection" in wanted:
            rows += bench_tflite("face-detection", "input", face_inputs(48), args.seconds, work / "face")
    print(f"\nhost: {THREADS} threads, batch 1; agreement against the FP32 original over 16 held-out real inputs")
    print_table(rows)


if __name__ == "__main__":
    main()
