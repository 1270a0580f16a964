"""The ``edgeml`` command line: build, inspect, verify and benchmark bundles; manage keys and targets.

The CLI only turns flags into arguments for the same functions Python users call
(``edgeml.compiler.api.compile`` for ``build``). Errors edgeml raises on purpose are printed as one
message, without a traceback, and mapped to distinct exit codes.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from edgeml.cli_errors import ErrorExitGroup
from edgeml.cli_tables import Table, print_table
from edgeml.cli_toolchain import toolchain
from edgeml.compiler import request
from edgeml.errors import BundleError, ConfigError, EdgeMLError, KeyStoreError
from edgeml.jsontypes import JSON

EXIT_OK = 0
EXIT_FAILURE = 1          # build failed, fidelity gate failed, runtime error
EXIT_USAGE = 2            # bad flags, bad config, unknown target (click uses 2 for usage errors too)
EXIT_VERIFY = 3           # the bundle cannot be trusted: signature, hashes, unsafe archive, format


def exit_code(exc: EdgeMLError) -> int:
    if isinstance(exc, BundleError):
        return EXIT_VERIFY
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_FAILURE


class _Group(ErrorExitGroup):
    """Exits with :func:`exit_code` on an EdgeMLError."""

    def exit_code(self, exc: EdgeMLError) -> int:
        return exit_code(exc)


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of text.")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeml", prog_name="edgeml")
def main() -> None:
    """edgeml: build signed model bundles for edge devices, and check them."""


# -- build -----------------------------------------------------------------------------------------

def parse_input_shape(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    """``name=1x3x224x224`` (repeatable) -> {"name": [1, 3, 224, 224]}."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            parsed = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            parsed = []
        if not sep or not name or not parsed:
            raise click.BadParameter(f"'{value}' must look like NAME=1x3x224x224", param_hint="--input-shape")
        shapes[name] = parsed
    return shapes or None


def _capture_policy(path: str | None) -> dict[str, JSON] | None:
    if path is None:
        return None
    from edgeml.jsonlimits import load_document

    doc = load_document(Path(path).read_bytes(), f"capture policy {path}", click.BadParameter, max_bytes=1 << 16,
                        max_depth=8)
    if not isinstance(doc, dict):
        raise click.BadParameter(f"{path} must hold a JSON object (see docs/agent.md, capture)")
    return doc


def _preprocess(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.suffix == ".json" and path.is_file() else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--preprocess") from exc
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--preprocess")
    return data


@main.command()
@click.argument("model", type=click.Path())
@click.option("--target", "-t", required=True, help="Target profile id (edgeml targets list) or a .toml file.")
@click.option("--precision", "-p", type=click.Choice(request.PRECISION_CHOICES), default=request.DEFAULT_PRECISION,
              show_default=True,
              help="auto builds every precision the target allows and keeps the fastest that passes.")
@click.option("--runtime", help="Build only for this runtime of the target.")
@click.option("--calibration", "-c", type=click.Path(),
              help="Calibration samples: .npz, .npy, an image folder or a folder of .npz (a captures export).")
@click.option("--eval", "evaluation", type=click.Path(),
              help="Held-out evaluation samples (default: part of --calibration).")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Labels (.npy/.txt, or .csv with a label column) of the evaluation samples.")
@click.option("--class-names", type=click.Path(dir_okay=False),
              help="Text file, one class name per line, shipped in the bundle.")
@click.option("--key", "-k", help="Signing key name or path (default: 'default').")
@click.option("--name", help="Bundle name (default: model file name).")
@click.option("--version", "bundle_version", default=request.DEFAULT_VERSION, show_default=True,
              help="Bundle version (semver).")
@click.option("--input-shape", multiple=True, metavar="NAME=1x3x224x224",
              help="Fix a dynamic input shape (repeatable).")
@click.option("--preprocess",
              help='Image preprocessing as JSON or a .json file, e.g. {"size": [224, 224], "mean": [...]}.')
@click.option("--tokenizer", type=click.Path(exists=True),
              help="tokenizer.json (or the model directory holding it) shipped in the bundle: the model takes text.")
@click.option("--state", multiple=True, metavar="INPUT=OUTPUT",
              help="A state pair of a streaming model: OUTPUT is fed back as INPUT on the next call "
                   "(repeatable; default: pairs found by name, e.g. state/stateN).")
@click.option("--audio-frames", metavar="INPUT=FRAME[/HOP]",
              help="The device cuts longer audio posted for INPUT into frames of FRAME samples every HOP.")
@click.option("--fallback", is_flag=True,
              help="Keep the most sensitive layers in float when a quantized candidate fails the gate.")
@click.option("--exclude-node", multiple=True, help="Never quantize this node (repeatable).")
@click.option("--exclude-op-type", multiple=True, help="Never quantize nodes of this op type (repeatable).")
@click.option("--per-channel", is_flag=True, help="Per-channel weight quantization (onnxruntime INT8).")
@click.option("--calibration-method", type=click.Choice(request.CALIBRATION_METHODS),
              default=request.DEFAULT_CALIBRATION_METHOD, show_default=True)
@click.option("--min-agreement", type=float, default=request.DEFAULT_GATE.min_agreement, show_default=True,
              help="Minimum top-1 agreement per output.")
@click.option("--min-cosine", type=float, default=request.DEFAULT_GATE.min_cosine, show_default=True,
              help="Minimum cosine similarity per output.")
@click.option("--min-snr-db", type=float, default=request.DEFAULT_GATE.min_snr_db,
              help="Minimum SNR (dB) per output (off by default).")
@click.option("--max-abs-error", type=float, default=request.DEFAULT_GATE.max_abs_error,
              help="Maximum absolute error per output (off by default).")
@click.option("--max-drop", type=float, default=request.DEFAULT_GATE.max_drop, show_default=True,
              help="Maximum task-accuracy drop (needs --labels).")
@click.option("--bench-seconds", type=float, default=request.DEFAULT_BENCH_SECONDS, show_default=True,
              help="Benchmark time per candidate.")
@click.option("--no-cache", is_flag=True, help="Rebuild every step instead of reusing the build cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output .edgepkg path.")
@click.option("--opset", type=int,
              help="ONNX opset of an export (.pt2, Hugging Face); default 18 or the target's maximum if lower.")
@click.option("--capture-policy", type=click.Path(exists=True, dir_okay=False),
              help="A JSON capture policy (which live samples devices send back), signed into the bundle.")
def build(model: str, target: str, precision: str, runtime: str | None, calibration: str | None,
          evaluation: str | None, labels: str | None, class_names: str | None, key: str | None, name: str | None,
          bundle_version: str, input_shape: tuple[str, ...], preprocess: str | None, tokenizer: str | None,
          state: tuple[str, ...], audio_frames: str | None, fallback: bool,
          exclude_node: tuple[str, ...], exclude_op_type: tuple[str, ...], per_channel: bool,
          calibration_method: str, min_agreement: float, min_cosine: float, min_snr_db: float | None,
          max_abs_error: float | None, max_drop: float, bench_seconds: float, no_cache: bool, as_json: bool,
          output: str | None, opset: int | None,
          capture_policy: str | None) -> None:
    """Build a signed bundle of MODEL for a target.

    MODEL: an .onnx or .tflite file; a .pt2 file (torch.export.save) or a Hugging Face checkpoint
    directory (config.json + model.safetensors), exported in the 'torch' toolchain; a Keras .keras/.h5
    file or a SavedModel directory, converted in the 'tflite' toolchain (edgeml toolchain install NAME).
    """
    from edgeml.compiler import api

    names = None
    if class_names:
        names = [ln.strip() for ln in Path(class_names).read_text(encoding="utf-8").splitlines() if ln.strip()]
    build_request = request.BuildRequest(
        model, target, precision=precision, runtime=runtime, output=output, calibration=calibration,
        evaluation=evaluation, labels=labels, key=key, name=name, version=bundle_version,
        input_shapes=parse_input_shape(input_shape), min_agreement=min_agreement, min_cosine=min_cosine,
        min_snr_db=min_snr_db, max_abs_error=max_abs_error, max_drop=max_drop, fallback=fallback,
        exclude_nodes=list(exclude_node), exclude_op_types=list(exclude_op_type), per_channel=per_channel,
        calibration_method=calibration_method, preprocess=_preprocess(preprocess), class_names=names,
        tokenizer=tokenizer, state=tuple(state), audio_frames=audio_frames,
        capture_policy=_capture_policy(capture_policy), benchmark_seconds=bench_seconds, use_cache=not no_cache,
        progress=not as_json and sys.stderr.isatty(),
    )
    # vendor quantizers (NNCF) draw their own progress on stdout; keep stdout for our table or JSON
    with contextlib.redirect_stdout(sys.stderr):
        result = api.compile(build_request) if opset is None else \
            api.compile(build_request, export_options={"opset": opset})
    if as_json:
        _print_json({**result.report.to_json(), "bundle": str(result.bundle_path)})
        return
    _render_report(result.report)
    click.echo(f"bundle: {result.bundle_path}")


def _render_report(report: Any) -> None:
    from edgeml.compiler.report import print_report

    print_report(report)


# -- inspect / verify / bench -----------------------------------------------------------------------

def _trust_store(trust: tuple[str, ...]) -> Any:
    from edgeml.bundle import TrustStore

    return TrustStore.from_paths(trust) if trust else TrustStore.default()


def _bundle_and_trust(command: Callable[..., Any]) -> Callable[..., Any]:
    """The BUNDLE argument and --trust option of the commands that open a signed bundle (verify, bench)."""
    command = click.option("--trust", multiple=True, type=click.Path(),
                           help="Trusted public key (.pub) or directory (repeatable); "
                                "default: your trusted keys.")(command)
    return click.argument("bundle", type=click.Path(dir_okay=False))(command)


@main.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@json_option
def inspect(bundle: str, as_json: bool) -> None:
    """Show what a bundle claims about itself (signature not checked: use `edgeml verify`)."""
    from edgeml.bundle import TrustStore, read_header

    header = read_header(bundle)
    m = header.manifest
    trusted = header.key_id in TrustStore.default() if header.key_id else False
    if as_json:
        _print_json({"manifest": m.raw, "key_id": header.key_id, "key_trusted_here": trusted})
        return
    click.echo(f"{m.name} {m.version}  target={m.target_id}  runtime={m.runtime} "
               f"({', '.join(m.runtime_preferences) or '-'})  precision={m.precision}")
    click.echo(f"signed by key {header.key_id} ({'trusted here' if trusted else 'NOT trusted here'}); "
               f"created {m.raw.get('created')}")
    print_table(Table("tensors", ("", "name", "dtype", "shape"),
                      [[kind, s.name, s.dtype, str(list(s.shape))]
                       for kind, specs in (("input", m.inputs), ("output", m.outputs)) for s in specs]))
    print_table(Table("files", ("path", "bytes", "sha256"), [[f.path, str(f.size), f.sha256[:16]] for f in m.files]))
    fid, bench = m.raw.get("fidelity") or {}, m.raw.get("benchmark") or {}
    if fid:
        click.echo(f"fidelity: agreement={fid.get('agreement')} cosine={fid.get('cosine')} "
                   f"accuracy={fid.get('accuracy')} passed={fid.get('passed')} ({fid.get('samples')} samples)")
    if bench:
        click.echo(f"benchmark: p50={bench.get('p50_ms')} ms p99={bench.get('p99_ms')} ms "
                   f"peak RSS +{bench.get('peak_rss_mb')} MB on {bench.get('host', {}).get('cpu', '?')}")


@main.command()
@_bundle_and_trust
@json_option
def verify(bundle: str, trust: tuple[str, ...], as_json: bool) -> None:
    """Check a bundle's signature and every file hash. Exit code 3 when it cannot be trusted."""
    from edgeml.bundle import verify_bundle

    try:
        store = _trust_store(trust)
    except KeyStoreError as exc:
        _fail(str(exc), EXIT_USAGE)
    if not len(store):
        _fail("no trusted keys: pass --trust KEY.pub, or trust one with `edgeml keys trust KEY.pub`", EXIT_VERIFY)
    verified = verify_bundle(bundle, store)
    m = verified.manifest
    if as_json:
        _print_json({"ok": True, "name": m.name, "version": m.version, "target": m.target_id,
                     "runtime": m.runtime, "precision": m.precision, "key_id": verified.key_id,
                     "files": len(m.files)})
        return
    click.echo(f"OK: {m.name} {m.version} ({m.target_id}, {m.runtime}, {m.precision}) signed by {verified.key_id}; "
               f"{len(m.files)} files match")


@main.command()
@_bundle_and_trust
@click.option("--seconds", type=float, default=3.0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@json_option
def bench(bundle: str, trust: tuple[str, ...], seconds: float, threads: int, as_json: bool) -> None:
    """Verify, unpack and benchmark a bundle on this host (with its smoke input)."""
    import numpy as np

    from edgeml.bundle import unpack_bundle
    from edgeml.compiler.hostrun import host_info, host_options, measure
    from edgeml.compiler.progress import ProgressBars
    from edgeml.targets import parse_profile

    store = _trust_store(trust)
    with tempfile.TemporaryDirectory(prefix="edgeml-bench-") as tmp:
        vb = unpack_bundle(bundle, Path(tmp) / "bundle", store)
        m = vb.manifest
        profile = parse_profile(m.target, f"{bundle}:manifest.target")
        options, notes = host_options(profile, m.runtime, threads)
        smoke = m.smoke
        if not smoke:
            _fail(f"{bundle} has no smoke sample to benchmark with")
        with np.load(vb.file(smoke["input"]), allow_pickle=False) as data:
            feed = {k: data[k] for k in data.files}
        with ProgressBars(enabled=not as_json and sys.stderr.isatty()) as progress:
            result = measure(vb.model_path, m.runtime, options, feed, seconds=seconds,
                             progress=lambda d, t: progress("benchmark", d, t))
    result.update(host=host_info(), notes=notes, size_bytes=sum(f.size for f in m.files))
    if as_json:
        _print_json(result)
        return
    columns = ("p50_ms", "p90_ms", "p99_ms", "throughput_ips", "iterations", "peak_rss_mb", "size_bytes")
    print_table(Table(f"{m.name} {m.version} ({m.runtime}/{m.precision}) on {result['device']}",
                      ("p50 ms", "p90 ms", "p99 ms", "throughput/s", "iterations", "peak RSS +MB", "bytes"),
                      [[str(result[k]) for k in columns]]))
    for note in notes:
        click.echo(f"note: {note}")


# -- keys ----------------------------------------------------------------------------------------------

@main.group()
def keys() -> None:
    """Signing keys (yours) and trusted keys (whose bundles this machine accepts)."""


@keys.command("generate")
@click.option("--name", default="default", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing key of that name.")
def keys_generate(name: str, force: bool) -> None:
    from edgeml.bundle import generate_key
    from edgeml.paths import keys_dir

    key = generate_key(name, overwrite=force)
    click.echo(f"generated key '{name}' (id {key.key_id}): {keys_dir() / (name + '.key')}, "
               f"public {keys_dir() / (name + '.pub')}")


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    from edgeml.bundle import key_id, load_public_key
    from edgeml.paths import keys_dir, trusted_keys_dir

    rows = []
    for kind, directory in (("signing", keys_dir()), ("trusted", trusted_keys_dir())):
        if directory.is_dir():
            for pub in sorted(directory.glob("*.pub")):
                rows.append({"kind": kind, "name": pub.stem, "key_id": key_id(load_public_key(pub)), "path": str(pub)})
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no keys; create one with: edgeml keys generate")
        return
    print_table(Table.from_records("keys", rows, [("kind", "kind"), ("name", "name"), ("key_id", "key id"),
                                                  ("path", "path")]))


@keys.command("trust")
@click.argument("public_key", type=click.Path(dir_okay=False))
def keys_trust(public_key: str) -> None:
    """Accept bundles signed by PUBLIC_KEY (.pub) on this machine."""
    from edgeml.bundle import trust_key

    kid = trust_key(public_key)
    click.echo(f"trusted key {kid}")


# -- targets ---------------------------------------------------------------------------------------------

@main.group()
def targets() -> None:
    """Target profiles (built in, or .toml files in your profile directories)."""


@targets.command("list")
@json_option
def targets_list(as_json: bool) -> None:
    from edgeml.targets import list_targets

    profiles = list_targets()
    if as_json:
        _print_json([{**p.to_json(), "description": p.description, "source": p.source} for p in profiles])
        return
    print_table(Table("targets", ("id", "runtimes", "precisions", "static shapes", "max opset", "description"),
                      [[p.id, ", ".join(p.runtimes), ", ".join(p.precisions), "yes" if p.static_shapes else "no",
                        str(p.max_opset), p.description] for p in profiles]))


@targets.command("show")
@click.argument("target_id")
@json_option
def targets_show(target_id: str, as_json: bool) -> None:
    from edgeml.targets import get_target

    p = get_target(target_id)
    data = {**p.to_json(), "description": p.description, "source": p.source}
    if as_json:
        _print_json(data)
        return
    for k, v in data.items():
        click.echo(f"{k:17} {json.dumps(v) if isinstance(v, (dict, list)) else v}")


main.add_command(toolchain)  # edgeml toolchain install|list|remove (edgeml/cli_toolchain.py)


if __name__ == "__main__":
    main()
