#!/usr/bin/env python
"""Benchmark the compiler on real models: one row per (model, target, candidate runtime/precision).

For each model and target, one ``edgeml.compile(..., precision="auto")`` builds every candidate the
target allows; the table shows each candidate's build time, size, p50/p99 latency on this host, the
speed ratio against the original FP32 model under plain onnxruntime (timed alternately with each
candidate in the same process, so the ratio holds even when the machine is busy),
agreement (top-1 where the output is a classifier, else cosine), and whether it passed the fidelity
gate; the row marked ``*`` is the one ``auto`` chose. Goals checked at the end (never in tests):

- x86-cpu and intel-npu with auto: the chosen bundle is never slower than the FP32 baseline;
- OpenVINO INT8 >= 1.4x faster than the baseline on a real CNN (ppocr-det);
- top-1 agreement >= 99% on the digits classifier (INT8);
- one build of a ~10 MB model (ppocr-rec) <= 60 s.

Run: ``.venv/bin/python scripts/bench_compiler.py [--quick] [--json out.json]``. Uses 2 threads.
Models come from PyPI wheels (tests/support/real_models.py); inputs from scikit-image photos.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.compiler.realdata import digits_classifier, scene_crops, text_line_crops, text_scenes  # noqa: E402
from tests.support.real_models import real_model  # noqa: E402


def _det_data(n: int, size: int) -> dict[str, np.ndarray]:
    """Mostly text (so the detector's map has something to find), some plain photos."""
    return {"x": np.concatenate([text_scenes(n - n // 4, size), scene_crops(n // 4, size)])}


def cases(quick: bool, work: Path) -> list[dict[str, Any]]:
    """(model, targets, data, build options) for every benchmark row group."""
    det_size = 320
    det = real_model("ppocr-det")
    cls = real_model("ppocr-cls")
    rec = real_model("ppocr-rec")
    np.savez(work / "det.npz", **_det_data(16 if quick else 32, det_size))
    lines, _ = text_line_crops(32 if quick else 64)
    np.savez(work / "cls.npz", x=lines)
    rec_lines, _ = text_line_crops(16 if quick else 32, height=48, width=320)
    np.savez(work / "rec.npz", x=rec_lines)
    digits, x_cal, x_test, y_test, _ = digits_classifier(work / "digits.onnx")
    det_shape = {"x": [1, 3, det_size, det_size]}
    out: list[dict[str, Any]] = [
        {"model": "ppocr-det", "path": det, "calibration": work / "det.npz", "input_shapes": det_shape,
         "targets": ["x86-cpu", "intel-npu", "jetson-orin", "arm64-cpu"], "fallback": True},
        {"model": "digits-mlp", "path": digits, "calibration": x_cal, "evaluation": x_test, "labels": y_test,
         # skl2onnx's label branch (ArrayFeatureExtractor, ai.onnx.ml) has no OpenVINO conversion: ORT only
         "targets": ["x86-cpu"], "runtime_for": {"x86-cpu": "onnxruntime"}},
        {"model": "ppocr-cls", "path": cls, "calibration": work / "cls.npz", "input_shapes": {"x": [1, 3, 48, 192]},
         "targets": ["x86-cpu", "intel-npu"]},
        {"model": "ppocr-rec", "path": rec, "calibration": work / "rec.npz", "input_shapes": {"x": [1, 3, 48, 320]},
         "targets": ["x86-cpu"], "precision": "int8", "runtime_for": {"x86-cpu": "openvino"}},
    ]
    if quick:
        out = [c for c in out if c["model"] in ("ppocr-det", "digits-mlp")]
        out[0]["targets"] = ["x86-cpu", "intel-npu"]
    return out


def run_case(case: dict[str, Any], target: str, seconds: float, work: Path) -> dict[str, Any]:
    import edgeml

    runtime = case.get("runtime_for", {}).get(target)
    if target == "arm64-cpu":
        runtime = "onnxruntime"  # LiteRT candidates need the isolated onnx2tf toolchain (scripts/bench_tflite.py)
    started = time.perf_counter()
    try:
        result = edgeml.compile(
            case["path"], target, precision=case.get("precision", "auto"), runtime=runtime,
            calibration=case.get("calibration"), evaluation=case.get("evaluation"), labels=case.get("labels"),
            input_shapes=case.get("input_shapes"), fallback=case.get("fallback", False),
            output=work / f"{case['model']}-{target}.edgepkg",
            benchmark_seconds=seconds, progress=sys.stderr.isatty(), use_cache=False,
        )
        report = result.report.to_json()
        error = None
    except Exception as exc:  # a failed build is a row in the table, not the end of the benchmark
        report, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return {"model": case["model"], "target": target, "seconds": time.perf_counter() - started,
            "report": report, "error": error}


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    table = []
    for r in results:
        rep = r["report"]
        if rep is None:
            table.append([r["model"], r["target"], "-", f"{r['seconds']:.1f}", "-", "-", "-", "-", "-", "-",
                          "ERROR " + (r["error"] or "")[:90]])
            continue
        base = rep["baseline"]
        table.append([r["model"], r["target"], "baseline ort/fp32", "-", "-",
                      f"{base['p50_ms']:.2f}" if base else "-", f"{base['p99_ms']:.2f}" if base else "-",
                      "1.00x" if base else "-", "-", "-", "source model, plain onnxruntime (alone)"])
        prefix = sum(s["seconds"] for s in rep["data"].get("prefix_steps", []))
        for c in rep["candidates"]:
            fid = c["fidelity"] or {}
            bench = c["benchmark"] or {}
            agreement = fid.get("agreement")
            quality = f"agree {agreement:.4f}" if agreement is not None else (
                f"cos {fid['cosine']:.5f}" if fid.get("cosine") is not None else "-")
            chosen = rep["chosen"] == f"{c['runtime']}/{c['precision']}"
            table.append([
                r["model"], r["target"], ("* " if chosen else "") + f"{c['runtime']}/{c['precision']}",
                f"{c['build_seconds'] + prefix:.1f}", f"{c['size_bytes'] / 1e6:.2f}" if c["size_bytes"] else "-",
                f"{bench['p50_ms']:.2f}" if bench else "-", f"{bench['p99_ms']:.2f}" if bench else "-",
                f"{c['speedup_vs_baseline']:.2f}x" if c["speedup_vs_baseline"] else "-", quality,
                "pass" if c["status"] == "passed" else c["status"],
                ((f"{len(c['excluded_nodes'])} layers kept float; " if c["excluded_nodes"] else "")
                 + (c["reason"] or ""))[:70],
            ])
    return table


HEADER = ["model", "target", "candidate", "build s", "MB", "p50 ms", "p99 ms", "vs fp32", "agreement", "gate", "note"]


def render(table: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [HEADER, *table]) for i in range(len(HEADER))]
    line = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, table)])


def goals(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    by = {(r["model"], r["target"]): r for r in results}
    for (model, target), r in by.items():
        rep = r["report"]
        if target in ("x86-cpu", "intel-npu") and rep and rep["precision"] == "auto" and rep["baseline"]:
            chosen = next((c for c in rep["candidates"] if f"{c['runtime']}/{c['precision']}" == rep["chosen"]), None)
            ratio = chosen["speedup_vs_baseline"] if chosen else None
            ok = ratio is not None and ratio >= 1.0
            lines.append(f"[{'PASS' if ok else 'MISS'}] {model} {target} auto chose {rep['chosen']}: "
                         f"{ratio if ratio is not None else '-'}x the FP32 baseline (goal: >= 1.0x)")
    for target in ("x86-cpu", "intel-npu"):
        rep = (by.get(("ppocr-det", target)) or {}).get("report")
        if rep:
            for ov in rep["candidates"]:
                if (ov["runtime"] != "openvino" or ov["precision"] not in ("int8", "mixed")
                        or not ov["speedup_vs_baseline"]):
                    continue
                ok = ov["speedup_vs_baseline"] >= 1.4
                gate = "passed the gate" if ov["status"] == "passed" else f"FAILED the gate ({ov['reason'][:60]})"
                lines.append(f"[{'PASS' if ok else 'MISS'}] ppocr-det {target} OpenVINO {ov['precision']}: "
                             f"{ov['speedup_vs_baseline']:.2f}x the baseline (goal: >= 1.4x); {gate}")
    rep = (by.get(("digits-mlp", "x86-cpu")) or {}).get("report")
    if rep:
        for c in rep["candidates"]:
            if c["precision"] in ("int8", "mixed") and c["fidelity"]:
                agreement = c["fidelity"]["outputs"]["label"]["agreement"]
                acc, ref = c["fidelity"].get("accuracy"), c["fidelity"].get("reference_accuracy")
                lines.append(f"[{'PASS' if agreement >= 0.99 else 'MISS'}] digits-mlp {c['runtime']}/{c['precision']}: "
                             f"top-1 agreement {agreement:.4f} (goal >= 0.99); accuracy {acc:.4f} vs float {ref:.4f}")
    rec = by.get(("ppocr-rec", "x86-cpu"))
    if rec:
        lines.append(f"[{'PASS' if rec['seconds'] <= 60 and rec['report'] else 'MISS'}] ppocr-rec "
                     f"({real_model('ppocr-rec').stat().st_size / 1e6:.1f} MB) one build "
                     f"({(rec['report'] or {}).get('chosen', 'failed')}): {rec['seconds']:.1f} s (goal <= 60 s)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer models, targets and samples")
    parser.add_argument("--seconds", type=float, default=3.0, help="benchmark time per candidate")
    parser.add_argument("--json", type=Path, help="also write every report here")
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--targets", help="comma-separated target ids (default: each model's list)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeml-bench-compiler-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("EDGEML_HOME", str(work / "home"))
        from edgeml.bundle import generate_key
        from edgeml.compiler.hostrun import host_info
        from edgeml.paths import keys_dir

        if not (keys_dir() / "default.key").exists():
            generate_key()
        results = []
        for case in cases(args.quick, work):
            if args.only and case["model"] not in args.only.split(","):
                continue
            for target in case["targets"]:
                if args.targets and target not in args.targets.split(","):
                    continue
                print(f"building {case['model']} for {target} ...", file=sys.stderr, flush=True)
                results.append(run_case(case, target, args.seconds, work))
        info = host_info()
        print(f"host: {info.get('cpu')} x{info.get('cpus')}, onnxruntime {info.get('onnxruntime')}, "
              f"openvino {info.get('openvino')}; 2 threads; load average {os.getloadavg()[0]:.1f}")
        print(render(rows(results)))
        print()
        print("\n".join(goals(results)))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
