"""Front-ends that run in an isolated toolchain, as a subprocess: ``.pt2`` and Hugging Face checkpoint
directories in the ``torch`` toolchain, Keras files and SavedModels in the ``tflite`` toolchain (which
already holds TensorFlow). Neither edgeml's own environment nor a device ever imports torch or TensorFlow.

The scripts they run ship with edgeml (:mod:`edgeml.toolchains.torch_export`,
:mod:`edgeml.toolchains.keras_convert`) and are run by file path, since edgeml is not installed in the
toolchains. Hubs are never contacted: the scripts load from the directory only and the environment sets
the Hugging Face offline switches.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from edgeml.compiler.frontends import detect, export_cache
from edgeml.compiler.frontends.imported import ImportedModel, read_export_dir
from edgeml.errors import ConversionError
from edgeml.toolchains import Toolchain, require

EXPORT_TIMEOUT_S = 1800.0
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2", "TOKENIZERS_PARALLELISM": "false"}
_TAIL_LINES = 25


def _script(module: str) -> Path:
    return Path(__file__).resolve().parents[2] / "toolchains" / f"{module}.py"


def _plan(kind: str, source: Path, out_dir: Path, opset: int) -> tuple[str, list[str], str]:
    """(toolchain, script arguments, model file it writes) for a front-end kind."""
    if kind == detect.PT2:
        return "torch", [str(_script("torch_export")), "pt2", str(source), str(out_dir), "--opset", str(opset)], \
            "model.onnx"
    if kind == detect.HUGGINGFACE:
        return "torch", [str(_script("torch_export")), "hf", str(source), str(out_dir), "--opset", str(opset)], \
            "model.onnx"
    if kind in (detect.KERAS, detect.SAVED_MODEL):
        return "tflite", [str(_script("keras_convert")), str(source), str(out_dir)], "model.tflite"
    raise ConversionError(f"no toolchain front-end for '{kind}' models")


def export_with_toolchain(kind: str, source: Path, workdir: Path, *, opset: int,
                          log: Callable[[str], None] = lambda line: None, use_cache: bool = True,
                          timeout: float = EXPORT_TIMEOUT_S) -> ImportedModel:
    """Export ``source`` (of ``kind``, see :mod:`detect`) in its toolchain, or reuse the cached export of
    the same content and options (:mod:`export_cache`)."""
    toolchain_name, args, model_file = _plan(kind, source.resolve(), workdir / "export", opset)
    what = {detect.PT2: "exporting a .pt2 ExportedProgram", detect.HUGGINGFACE: "exporting a Hugging Face checkpoint",
            }.get(kind, "converting a Keras/SavedModel model")
    toolchain = require(toolchain_name, what)
    digest = detect.digest_source(source)
    key = export_cache.cache_key(kind=kind, source_sha256=digest, opset=opset, script=Path(args[0]),
                                 recipe_hash=str(toolchain.marker.get("recipe_hash", "")))
    name = source.stem if source.is_file() else source.name
    hit = export_cache.lookup(key) if use_cache else None
    if hit is not None:
        log(f"import: reusing the cached export of {source} ({hit})")
        return replace(read_export_dir(hit, model_file, name=name, source_name=source.name, source_sha256=digest),
                       cached=True)
    log(f"import: {what} ({source}) in the '{toolchain_name}' toolchain")
    _run(toolchain, args, workdir, what=f"{what} ({source})", timeout=timeout)
    out_dir = export_cache.store(key, workdir / "export") if use_cache else workdir / "export"
    return read_export_dir(out_dir, model_file, name=name, source_name=source.name, source_sha256=digest)


def _run(toolchain: Toolchain, args: list[str], workdir: Path, *, what: str, timeout: float) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        proc = toolchain.run(["python", *args], cwd=workdir, timeout=timeout, env=_OFFLINE_ENV)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"{what} took more than {timeout:.0f} s and was stopped") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-_TAIL_LINES:])
        raise ConversionError(f"{what} failed in the '{toolchain.name}' toolchain (exit {proc.returncode}):\n{tail}")
