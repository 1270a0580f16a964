#!/usr/bin/env python3
"""Release a model from CI: build it with the fidelity gate, push the signed bundle to the fleet, roll it
out to a canary group, wait for the fleet's gates, and fail the job (with the figures) when a gate fails.

Uses only edgeml's public Python API: ``edgeml.compile`` and ``edgeml.fleet.Client``. The fleet comes from
EDGEML_FLEET_URL and EDGEML_FLEET_TOKEN (a ``deployer`` token), or --fleet-url / --fleet-token.

Exit codes (so a pipeline can tell them apart):
    0  released: built, pushed, and every wave of the canary rollout passed its gates
    1  the build failed (e.g. no candidate passed the fidelity gate): nothing was pushed
    2  the rollout failed: a gate stopped it (the message names it and shows the figures) or it was aborted
    3  the rollout did not finish within --timeout-s (it goes on: follow it with edgeml-fleet rollout status)
    4  anything else: the fleet refused a request (auth, conflict, bad input), could not be reached, bad options
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import edgeml
from edgeml.errors import CompileError, EdgeMLError, RolloutFailed, RolloutTimeout
from edgeml.fleet import Client

BUILD_FAILED, ROLLOUT_FAILED, ROLLOUT_TIMEOUT, OTHER_ERROR = 1, 2, 3, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    build = p.add_argument_group("build (edgeml.compile)")
    build.add_argument("--model", required=True, type=Path, help="the trained model (.onnx, .tflite, ...)")
    build.add_argument("--target", required=True, help="target profile id, e.g. x86-cpu, arm64-cpu, jetson-orin")
    build.add_argument("--name", required=True, help="bundle (model) name")
    build.add_argument("--version", required=True, help="semver, strictly above the fleet's latest for --name")
    build.add_argument("--key", required=True, help="signing key (a path, or a key name under $EDGEML_HOME/keys)")
    build.add_argument("--calibration", type=Path, default=None, help=".npz/.npy or image folder")
    build.add_argument("--precision", default="auto", help="int8, fp16, fp32 or auto (default: auto)")
    build.add_argument("--runtime", default=None, help="build for this runtime only (default: all the target has)")
    build.add_argument("--min-agreement", type=float, default=0.97, help="fidelity gate: top-1 agreement")
    build.add_argument("--min-cosine", type=float, default=0.98, help="fidelity gate: cosine similarity")
    build.add_argument("--output", type=Path, default=None, help="where to write the bundle")
    roll = p.add_argument_group("canary rollout (edgeml.fleet.Client)")
    roll.add_argument("--group", required=True, help="the canary group of devices")
    roll.add_argument("--waves", default="100", help="cumulative percentages of the group, e.g. 10,100")
    roll.add_argument("--max-error-rate", type=float, default=0.05)
    roll.add_argument("--max-latency-regression", type=float, default=0.5)
    roll.add_argument("--max-drift", type=float, default=None, help="PSI of live inputs against the reference")
    roll.add_argument("--min-shadow-agreement", type=float, default=None)
    roll.add_argument("--min-requests", type=int, default=20, help="traffic a wave needs before it is judged")
    roll.add_argument("--observe-s", type=float, default=600, help="observation window per wave")
    roll.add_argument("--wave-timeout-s", type=float, default=1800)
    roll.add_argument("--probation-s", type=float, default=None, help="the agents' probation (default: theirs)")
    roll.add_argument("--on-failure", choices=["pause", "abort"], default="abort",
                      help="a failed gate aborts by default: every canary goes back to its previous version")
    roll.add_argument("--timeout-s", type=float, default=3600, help="give up waiting after this long")
    roll.add_argument("--fleet-url", default=None, help="default: $EDGEML_FLEET_URL")
    roll.add_argument("--fleet-token", default=None, help="default: $EDGEML_FLEET_TOKEN")
    roll.add_argument("--report", type=Path, default=None, help="write the final rollout status here (JSON)")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Path:
    result = edgeml.compile(args.model, args.target, precision=args.precision, runtime=args.runtime,
                            calibration=args.calibration, key=args.key, name=args.name, version=args.version,
                            output=args.output, min_agreement=args.min_agreement, min_cosine=args.min_cosine)
    chosen = result.report.chosen
    if chosen is not None:
        fidelity = chosen.fidelity or {}
        print(f"built {result.bundle_path}: {chosen.runtime}/{chosen.precision}, agreement "
              f"{fidelity.get('agreement', 0):.4g}, cosine {fidelity.get('cosine', 0):.4g} "
              f"(gate: >= {args.min_agreement}, >= {args.min_cosine})")
    return result.bundle_path


def release(args: argparse.Namespace, bundle_path: Path) -> dict[str, Any]:
    with Client(args.fleet_url, args.fleet_token) as fleet:
        bundle = fleet.push_bundle(bundle_path)
        print(f"pushed {bundle.ref} (sha256 {bundle.id})")
        rollout = fleet.create_rollout(
            bundle.ref, group=args.group, waves=[int(w) for w in args.waves.split(",")],
            max_error_rate=args.max_error_rate, max_latency_regression=args.max_latency_regression,
            max_drift=args.max_drift, min_shadow_agreement=args.min_shadow_agreement, min_requests=args.min_requests,
            observe_s=args.observe_s, wave_timeout_s=args.wave_timeout_s, probation_s=args.probation_s,
            on_failure=args.on_failure)
        print(f"rollout {rollout.id}: {bundle.ref} to {rollout.devices} device(s) of group '{args.group}'", flush=True)
        seen: set[tuple[str, int]] = set()

        def progress(status: Any) -> None:
            if (status.state, status.wave) not in seen:
                seen.add((status.state, status.wave))
                print(f"  {status.state}, wave {status.wave}/{status.waves}, devices {status.counts}", flush=True)

        final = fleet.wait_rollout(rollout.id, timeout=args.timeout_s, on_status=progress)
        for result in final.results:
            new = result.figures.get("new") or {}
            print(f"wave {result.wave}: passed on {new.get('requests')} requests, error rate {new.get('error_rate')}, "
                  f"p50 {new.get('p50_ms')} ms, drift {new.get('drift')}")
        print(f"released {bundle.ref} to group '{args.group}'")
        return final.raw


def summary(text: str) -> None:
    """Shown on the job's page in GitHub Actions (a no-op elsewhere)."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a") as out:
            out.write(f"```\n{text}\n```\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        bundle_path = build(args)
    except CompileError as exc:
        print(f"build failed, nothing pushed:\n{exc}", file=sys.stderr)
        summary(f"build failed:\n{exc}")
        return BUILD_FAILED
    except EdgeMLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return OTHER_ERROR
    try:
        final = release(args, bundle_path)
    except RolloutFailed as exc:
        print(f"rollout failed:\n{exc}", file=sys.stderr)
        summary(f"rollout failed:\n{exc}")
        _write_report(args.report, getattr(exc.status, "raw", None))
        return ROLLOUT_FAILED
    except RolloutTimeout as exc:
        print(f"rollout not finished: {exc}", file=sys.stderr)
        _write_report(args.report, getattr(exc.status, "raw", None))
        return ROLLOUT_TIMEOUT
    except EdgeMLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return OTHER_ERROR
    _write_report(args.report, final)
    summary(f"released {args.name}@{args.version} to group '{args.group}'")
    return 0


def _write_report(path: Path | None, status: dict[str, Any] | None) -> None:
    if path is not None and status is not None:
        path.write_text(json.dumps(status, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
