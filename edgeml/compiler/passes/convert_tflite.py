"""``convert_tflite``: ONNX -> TFLite (fp32, fp16 or full INT8) with onnx2tf, run in its isolated
toolchain (``edgeml toolchain install tflite``) as a subprocess.

- The work directory holds ``calibration_image_sample_data_20x128x128x3_float32.npy``: onnx2tf fetches
  that file from the internet for 4-D image inputs (even for FP32, as validation data) unless it is
  in the working directory, so edgeml writes a local one and conversion works air-gapped. The
  subprocess also gets a dead proxy so any other download attempt fails at once instead of leaking.
- INT8 is onnx2tf's ``-oiqt`` calibrated with the build's own calibration samples (``-cind`` with a
  ``.npy`` per input, mean 0 / std 1 since the samples are already preprocessed). Of its outputs we
  take ``*_integer_quant.tflite``: int8 weights and activations with float32 inputs/outputs, so the
  candidate takes the same feeds as the reference.
- Inputs keep the ONNX layout (``keep_layout``, onnx2tf ``-k``). The I/O tensors are renamed to the
  ONNX names afterwards (:func:`name_io_like_onnx`); the name/layout map is in ``metadata["tflite_io"]``.
- One onnx2tf run produces fp32 and fp16 together (and with ``-oiqt`` the int8 model too), so runs
  are kept under ``cache_dir()/onnx2tf`` keyed by (model digest, options) and reused (:func:`runs_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.modelinfo import digest_files, import_onnx, load_onnx, onnx_specs
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_ort import validate_config
from edgeml.compiler.tflite_inspect import inspect_tflite
from edgeml.compiler.tflite_io import io_entries, io_map
from edgeml.errors import ConfigError, ConversionError
from edgeml.jsontypes import JSON
from edgeml.paths import cache_dir
from edgeml.toolchains import Toolchain, require

if TYPE_CHECKING:
    from ai_edge_litert.schema_py_generated import ModelT

SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
OUTPUT_SUFFIX = {"fp32": "_float32.tflite", "fp16": "_float16.tflite", "int8": "_integer_quant.tflite"}
# Any proxy-aware download inside the subprocess goes to a closed local port and fails immediately.
_NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "",
               "no_proxy": ""}


def write_sample_file(directory: Path) -> Path:
    """The stand-in for onnx2tf's downloaded MS-COCO sample: 20 deterministic 128x128 RGB images in
    [0, 1] (smooth gradients plus noise). onnx2tf only uses it as dummy/validation input here; INT8
    calibration always uses the build's own data."""
    rng = np.random.default_rng(20)
    yy, xx = np.meshgrid(np.linspace(0, 1, 128), np.linspace(0, 1, 128), indexing="ij")
    images = []
    for i in range(20):
        phase = i / 20
        base = np.stack([(xx + phase) % 1, (yy + 2 * phase) % 1, (xx * yy + phase) % 1], axis=-1)
        images.append(np.clip(0.8 * base + 0.2 * rng.random((128, 128, 3)), 0, 1))
    path = directory / SAMPLE_FILE
    np.save(path, np.asarray(images, dtype=np.float32))
    return path


def _static_shapes(inputs: list[TensorSpec], configured: Mapping[str, list[int]] | None,
                   ctx: BuildContext) -> dict[str, list[int]]:
    """Static shapes for inputs with dynamic dims: the configured ones, else the first sample's."""
    shapes: dict[str, list[int]] = {}
    sample = None
    for source in (ctx.calibration, ctx.evaluation):
        if source is not None and len(source):
            sample = source[0]
            break
    for spec in inputs:
        if all(isinstance(d, int) for d in spec.shape):
            continue
        if configured and spec.name in configured:
            shapes[spec.name] = [int(d) for d in configured[spec.name]]
        elif sample is not None and spec.name in sample and np.asarray(sample[spec.name]).ndim == len(spec.shape):
            shapes[spec.name] = [int(d) for d in np.asarray(sample[spec.name]).shape]
        else:
            example = "x".join(str(d) if isinstance(d, int) else "1" for d in spec.shape)
            raise ConversionError(
                f"input '{spec.name}' has dynamic shape {list(spec.shape)}; TFLite conversion needs it static: "
                f"give --input-shape {spec.name}={example} (input_shapes option) or calibration samples"
            )
    return shapes


def _calibration_arrays(ctx: BuildContext, inputs: list[TensorSpec], shapes: Mapping[str, list[int]],
                        limit: int) -> dict[str, Array]:
    samples = ctx.calibration
    if samples is None or not len(samples):
        raise ConversionError("convert_tflite precision int8 needs calibration data: pass --calibration "
                              "(a .npz/.npy or an image folder) so the INT8 ranges come from real inputs")
    arrays: dict[str, list[Array]] = {s.name: [] for s in inputs}
    for i, feed in enumerate(samples):
        if i >= limit:
            break
        for spec in inputs:
            if spec.name not in feed:
                raise ConversionError(f"calibration sample {i} has no input '{spec.name}' "
                                      f"(it has {', '.join(feed)})")
            arrays[spec.name].append(np.asarray(feed[spec.name], dtype=np.float32))
    out = {}
    for spec in inputs:
        stacked = np.concatenate([a if a.ndim == len(spec.shape) else a[None] for a in arrays[spec.name]])
        want = shapes.get(spec.name)
        if want and list(stacked.shape[1:]) != list(want[1:]):
            raise ConversionError(f"calibration data for '{spec.name}' has shape {list(stacked.shape[1:])} per "
                                  f"sample; the model input is fixed to {want[1:]}")
        out[spec.name] = stacked
    return out


class ConvertTflite(Pass):
    """Config: ``precision`` (fp32 | fp16 | int8), ``keep_layout`` (true), ``input_shapes`` (None),
    ``quant_type`` (per-channel | per-tensor), ``calibration_samples`` (100), ``timeout_s`` (1800)."""

    name = "convert_tflite"
    defaults: Mapping[str, JSON] = {"precision": "fp32", "keep_layout": True, "input_shapes": None,
                                   "quant_type": "per-channel", "calibration_samples": 100, "timeout_s": 1800.0}

    def __init__(self, **config: JSON) -> None:
        timeout = config.get("timeout_s")
        if isinstance(timeout, int) and not isinstance(timeout, bool):
            config["timeout_s"] = float(timeout)
        merged = validate_config(self.name, config, self.defaults)
        if merged["precision"] not in OUTPUT_SUFFIX:
            raise ConfigError(f"pass '{self.name}': precision must be one of {', '.join(OUTPUT_SUFFIX)}, "
                              f"got {merged['precision']!r}")
        if merged["quant_type"] not in ("per-channel", "per-tensor"):
            raise ConfigError(f"pass '{self.name}': quant_type must be per-channel or per-tensor")
        super().__init__(**merged)

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format == "tflite":
            return self._from_tflite(artifact, ctx)
        if artifact.format != "onnx":
            raise ConversionError(f"convert_tflite needs an ONNX or TFLite model, got {artifact.format} "
                                  f"({artifact.path})")
        toolchain = require("tflite", "converting ONNX models to TFLite")
        precision = self.opt_str("precision")
        inputs, outputs = onnx_specs(load_onnx(artifact.path))
        shapes = _static_shapes(inputs, self.opt_shapes("input_shapes"), ctx)
        calib = (_calibration_arrays(ctx, inputs, shapes, self.opt_int("calibration_samples"))
                 if precision == "int8" else None)

        base_key = _key({"digest": artifact.digest, "keep": self.opt_bool("keep_layout"), "shapes": shapes,
                         "tool": toolchain.marker.get("recipe_hash")})
        quant_key = _key({"calib": {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in (calib or {}).items()},
                          "qt": self.opt_str("quant_type")}) if calib is not None else ""
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        produced = _find_run(runs_dir(), base_key, quant_key, "model" + OUTPUT_SUFFIX[precision])
        if produced is None:
            run_key = f"{base_key}{'-q' + quant_key if quant_key else ''}"
            produced = self._convert_once(toolchain, artifact.path, run_key,
                                          inputs, shapes, calib, ctx)
        final = ctx.workdir / f"{artifact.path.stem}_{precision}.tflite"
        renamed = name_io_like_onnx(produced, final, inputs, outputs)

        info = inspect_tflite(final)
        mapping = io_map(inputs, outputs, info)
        transposed = transpose_outputs_to_onnx_layout(final, mapping)
        if transposed:
            info = inspect_tflite(final)
            mapping = io_map(inputs, outputs, info)
        ctx.log(f"convert_tflite: {artifact.path.name} -> {final.name} ({info.precision}, "
                f"{final.stat().st_size / 1024:.0f} KiB)")
        metadata = {
            **artifact.metadata,
            "converter": f"onnx2tf {toolchain.versions.get('onnx2tf', '?')} "
                         f"(tensorflow {toolchain.versions.get('tensorflow', '?')})",
            "tflite_io": mapping,
            "input_shapes": shapes,
            "tflite_ops": info.op_counts,
            "renamed_io_tensors": renamed,
            "transposed_outputs": transposed,
        }
        if calib is not None:
            metadata["calibration_samples"] = int(next(iter(calib.values())).shape[0])
        return artifact.evolve(path=final, format="tflite", precision=precision, digest=digest_files([final]),
                               extra_files=(), runtime="litert", metadata=metadata)

    def _convert_once(self, toolchain: Toolchain, source: Path, run_key: str, inputs: list[TensorSpec],
                      shapes: dict[str, list[int]], calib: dict[str, Array] | None, ctx: BuildContext) -> Path:
        """Run onnx2tf into a staging directory renamed to ``runs_dir()/onnx2tf-<run_key>`` when it
        succeeded, so an interrupted conversion never leaves a run that looks complete."""
        stem, runs = "model", runs_dir()
        wanted = stem + OUTPUT_SUFFIX[self.opt_str("precision")]
        name = f"onnx2tf-{run_key}"
        staging = runs / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        try:
            self._convert(toolchain, source, staging, stem, inputs, shapes, calib, ctx)
            if not (staging / "out" / wanted).exists():
                raise ConversionError(f"onnx2tf finished but wrote no {wanted}; see {staging / 'onnx2tf.log'}")
            with contextlib.suppress(OSError):  # a concurrent build renamed the same run first
                os.rename(staging, runs / name)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return runs / name / "out" / wanted

    def _from_tflite(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        """A ``.tflite`` source is already a LiteRT model: fp32 keeps it as it is (whatever precision its
        weights have), int8 quantizes it with ai-edge-quantizer; fp16 is not offered for it."""
        precision = self.opt_str("precision")
        if precision == "int8":
            from edgeml.compiler.passes.quantize_tflite import QuantizeTflite

            return QuantizeTflite(mode="static", calibration_samples=self.opt_int("calibration_samples")).run(
                artifact, ctx)
        if precision == "fp16":
            raise ConversionError("a .tflite source is built as it is (precision fp32, keeping its own weights) "
                                  "or quantized (int8); re-quantizing it to fp16 is not supported")
        return artifact.evolve(runtime="litert")

    def _convert(self, toolchain: Toolchain, model: Path, run_dir: Path, stem: str, inputs: list[TensorSpec],
                 shapes: Mapping[str, list[int]], calib: Mapping[str, Array] | None,
                 ctx: BuildContext) -> Path:
        run_dir.mkdir(parents=True)
        renamed_nodes = write_tf_safe_onnx(model, run_dir / f"{stem}.onnx")
        if renamed_nodes:
            ctx.log(f"convert_tflite: renamed {renamed_nodes} ONNX node(s) whose names TensorFlow rejects")
        write_sample_file(run_dir)
        out_dir = run_dir / "out"
        args = ["onnx2tf", "-i", f"{stem}.onnx", "-o", str(out_dir)]
        if self.opt_bool("keep_layout"):
            args += ["-k", *[s.name for s in inputs]]
        if shapes:
            args += ["-ois", *[f"{n}:{','.join(map(str, d))}" for n, d in shapes.items()]]
        if calib is not None:
            args += ["-oiqt", "-qt", self.opt_str("quant_type")]
            for i, (name, array) in enumerate(calib.items()):
                npy = run_dir / f"calib_{i}.npy"
                np.save(npy, array)
                args += ["-cind", name, str(npy), "0.0", "1.0"]
        ctx.log(f"convert_tflite: running {' '.join(args)}")
        env = {**_NO_NETWORK, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        try:
            proc = toolchain.run(args, cwd=run_dir, timeout=self.opt_float("timeout_s"), env=env)
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"onnx2tf timed out after {self.opt_float('timeout_s')} s on {model.name}; "
                                  "raise the convert_tflite timeout_s option") from exc
        log = run_dir / "onnx2tf.log"
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise ConversionError(f"onnx2tf failed on {model.name} (exit {proc.returncode}); full log: {log}\n{tail}")
        return out_dir


_TF_SCOPE = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def write_tf_safe_onnx(src: Path, dst: Path) -> int:
    """Copy the ONNX model, renaming nodes whose names TensorFlow refuses as scope names.

    onnx2tf names Keras layers after ONNX nodes; TensorFlow accepts only ``[A-Za-z0-9_.\\/>-]``, and
    exporters such as Paddle2ONNX emit names like ``Softmax@0``. Returns the number of nodes renamed.
    """
    model = load_onnx(src)
    taken = {n.name for n in model.graph.node}
    renamed = 0
    for node in model.graph.node:
        if node.name and _TF_SCOPE.search(node.name):
            base = _TF_SCOPE.sub("_", node.name).lstrip("_.-/>") or "node"
            name, i = base, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            taken.add(name)
            node.name = name
            renamed += 1
    if renamed:
        import_onnx().save_model(model, str(dst))
    else:
        shutil.copyfile(src, dst)
    return renamed


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _signature_names(model: ModelT) -> dict[str, str]:
    """{tensor name: signature name} over every signature's inputs and outputs."""
    names = {}
    for sig in model.signatureDefs or []:
        tensors = model.subgraphs[sig.subgraphIndex].tensors
        for tm in [*(sig.inputs or []), *(sig.outputs or [])]:
            names[_text(tensors[tm.tensorIndex].name)] = _text(tm.name)
    return names


_SAVED_MODEL_NAME = re.compile(r"^(?:serving_default_)?(.*?)(?::\d+)?$")
_ORDINAL = re.compile(r"(?:^output_|^Identity_|PartitionedCall:)(\d+)$")


def _ordinal(name: str) -> int | None:
    if name in ("Identity", "output"):
        return 0
    m = _ORDINAL.search(name)
    return int(m.group(1)) if m else None


def _shape_fits(onnx_shape: Sequence[int | str], shape: Sequence[int]) -> bool:
    def same(a: Sequence[int | str], b: Sequence[int]) -> bool:
        return len(a) == len(b) and all(not isinstance(x, int) or x == y for x, y in zip(a, b, strict=True))

    rank = len(onnx_shape)
    return same(onnx_shape, shape) or (rank >= 3 and same([onnx_shape[0], *onnx_shape[2:], onnx_shape[1]], shape))


def _pair(tensors: Sequence[tuple[str, str, list[int]]], specs: Sequence[TensorSpec]) -> list[str]:
    """The ONNX name for each TFLite I/O tensor given as (tensor name, signature name, shape).

    onnx2tf does not keep ONNX names reliably (its ``-coion`` needs ``flatc`` and ONNX names without
    '/'), nor, it warns, the order. In turn: an exact name match (tensor or signature, with SavedModel
    decoration stripped); a shape that fits exactly one ONNX tensor; the ordinal in names such as
    ``output_1``/``Identity_1``/``PartitionedCall:1``; the position.
    """
    onnx_names = [sp.name for sp in specs]
    chosen: list[str | None] = [None] * len(tensors)
    free = list(onnx_names)
    for i, (tname, sname, _shape) in enumerate(tensors):
        for cand in (tname, sname, _SAVED_MODEL_NAME.sub(r"\1", tname)):
            if cand in free:
                chosen[i] = cand
                free.remove(cand)
                break
    for i, (_tname, _sname, shape) in enumerate(tensors):
        if chosen[i] is None:
            fits = [sp.name for sp in specs if sp.name in free and _shape_fits(sp.shape, shape)]
            if len(fits) == 1 and sum(_shape_fits(sp.shape, shape) for sp in specs if sp.name in free) == 1:
                chosen[i] = fits[0]
                free.remove(fits[0])
    for i, (tname, sname, _shape) in enumerate(tensors):
        if chosen[i] is None:
            k = _ordinal(sname) if _ordinal(sname) is not None else _ordinal(tname)
            if k is not None and k < len(onnx_names) and onnx_names[k] in free:
                chosen[i] = onnx_names[k]
                free.remove(onnx_names[k])
    for i in range(len(tensors)):
        if chosen[i] is None:
            chosen[i] = free.pop(0)
    return [c for c in chosen if c is not None]


def name_io_like_onnx(src: Path, dst: Path, onnx_inputs: Sequence[TensorSpec],
                      onnx_outputs: Sequence[TensorSpec]) -> int:
    """Copy ``src`` to ``dst`` with its input/output tensors (and signature entries) named as in the
    ONNX model, so runtimes address the candidate exactly like the reference. Returns how many
    tensors were renamed."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    sg = model.subgraphs[0]
    sig_names = _signature_names(model)
    renamed = 0
    new_names: dict[int, str] = {}
    for indices, specs in ((sg.inputs, onnx_inputs), (sg.outputs, onnx_outputs)):
        if len(indices) != len(specs):
            raise ConversionError(f"onnx2tf produced {len(indices)} tensors where the ONNX model has {len(specs)}")
        described = [(_text(sg.tensors[i].name), sig_names.get(_text(sg.tensors[i].name), ""),
                      [int(d) for d in sg.tensors[i].shape]) for i in indices]
        for index, name in zip(indices, _pair(described, specs), strict=True):
            new_names[int(index)] = name
            if _text(sg.tensors[index].name) != name:
                sg.tensors[index].name = name
                renamed += 1
    for sig in model.signatureDefs or []:
        for tm in [*(sig.inputs or []), *(sig.outputs or [])]:
            if int(tm.tensorIndex) in new_names:
                tm.name = new_names[int(tm.tensorIndex)]
    flatbuffer_utils.write_model(model, str(dst))
    return renamed


def transpose_outputs_to_onnx_layout(path: Path, mapping: Mapping[str, JSON]) -> list[str]:
    """Append a TRANSPOSE after every output onnx2tf left channels-last, in place, so the model's
    outputs have the ONNX shapes and names (a drop-in for the reference, the gate and the agent).
    Returns the names of the outputs transposed."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    todo = {tflite: perm for _, tflite, perm in io_entries(mapping, "outputs") if perm}
    if not todo:
        return []
    model = flatbuffer_utils.read_model(str(path))
    sg = model.subgraphs[0]
    code_index = next((i for i, c in enumerate(model.operatorCodes)
                       if int(c.builtinCode) == schema.BuiltinOperator.TRANSPOSE), None)
    if code_index is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.TRANSPOSE
        code.version = 1
        model.operatorCodes.append(code)
        code_index = len(model.operatorCodes) - 1
    done = []
    new_outputs = []
    for index in sg.outputs:
        tensor = sg.tensors[index]
        name = _text(tensor.name)
        if name not in todo:
            new_outputs.append(int(index))
            continue
        back = [int(i) for i in np.argsort(todo[name])]
        perm_buffer = schema.BufferT()
        perm_buffer.data = np.frombuffer(np.asarray(back, dtype=np.int32).tobytes(), dtype=np.uint8)
        model.buffers.append(perm_buffer)
        perm_tensor = schema.TensorT()
        perm_tensor.name, perm_tensor.type = f"{name}/to_onnx_layout/perm", schema.TensorType.INT32
        perm_tensor.shape = [len(back)]
        perm_tensor.buffer = len(model.buffers) - 1
        out = schema.TensorT()
        out.name, out.type, out.buffer = name, tensor.type, 0
        out.shape = [int(tensor.shape[j]) for j in back]
        if tensor.shapeSignature is not None and len(tensor.shapeSignature):
            out.shapeSignature = [int(tensor.shapeSignature[j]) for j in back]
        tensor.name = f"{name}/channels_last"
        sg.tensors += [perm_tensor, out]
        op = schema.OperatorT()
        op.opcodeIndex = code_index
        op.inputs, op.outputs = [int(index), len(sg.tensors) - 2], [len(sg.tensors) - 1]
        op.builtinOptionsType = schema.BuiltinOptions.TransposeOptions
        op.builtinOptions = schema.TransposeOptionsT()
        sg.operators.append(op)
        new_outputs.append(len(sg.tensors) - 1)
        for sig in model.signatureDefs or []:
            for tm in sig.outputs or []:
                if int(tm.tensorIndex) == int(index):
                    tm.tensorIndex = len(sg.tensors) - 1
        done.append(name)
    sg.outputs = new_outputs
    flatbuffer_utils.write_model(model, str(path))
    return done


def runs_dir() -> Path:
    """Where finished onnx2tf runs are kept: one run yields fp32 and fp16 (and int8 with calibration),
    so the other precisions of the same model, in this build or the next, reuse it instead of
    paying for TensorFlow again. Failed runs are deleted; only complete ones are renamed in here."""
    path = cache_dir() / "onnx2tf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(data: Mapping[str, JSON]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _find_run(workdir: Path, base_key: str, quant_key: str, filename: str) -> Path | None:
    """A previous onnx2tf run in this work directory that already produced ``filename``."""
    pattern = f"onnx2tf-{base_key}-q{quant_key}" if quant_key else f"onnx2tf-{base_key}*"
    for run_dir in sorted(workdir.glob(pattern)):
        candidate = run_dir / "out" / filename
        if candidate.exists() and (run_dir / "onnx2tf.log").exists():
            return candidate
    return None
