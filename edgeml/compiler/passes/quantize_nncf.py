"""NNCF post-training INT8 quantization of an OpenVINO model: IR in (ONNX accepted too), INT8 IR out.

NNCF inserts FakeQuantize nodes and folds the weights to int8; the OpenVINO CPU plugin then runs the
convolutions in u8/i8, which is where OpenVINO's INT8 speed-up comes from (ONNX Runtime's QDQ path is
often slower than FP32 on the same CPU, see FACTS.md). Telemetry of both stays off.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from edgeml.arrays import Array
from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_ort import CALIBRATION_HINT, Samples, validate_config
from edgeml.errors import ConfigError, QuantizationError
from edgeml.extras import import_extra
from edgeml.jsontypes import JSON, as_int
from edgeml.runtimes.openvino_backend import import_openvino
from edgeml.runtimes.vendor_telemetry import disable_vendor_telemetry

if TYPE_CHECKING:
    from openvino import Model

PRESETS = ("performance", "mixed")
MODEL_TYPES = ("", "transformer")
# OpenVINO device of the target profile -> NNCF's hardware config (which ops/schemes it quantizes).
TARGET_DEVICES = {"CPU": "CPU", "GPU": "GPU", "NPU": "NPU"}


def import_nncf() -> ModuleType:
    import_openvino()  # telemetry off before nncf imports openvino_telemetry
    nncf = import_extra("nncf", "nncf", "nncf", "NNCF post-training quantization")
    disable_vendor_telemetry()
    return nncf


class _Limited:
    """The first ``total`` samples of a SampleSet, iterable as often as NNCF needs."""

    def __init__(self, samples: Samples, total: int) -> None:
        self.samples = samples
        self.total = total

    def __iter__(self) -> Iterator[object]:
        return itertools.islice(iter(self.samples), self.total)

    def __len__(self) -> int:
        return self.total


def _feed(raw: object, input_names: list[str]) -> dict[str, Array]:
    if not isinstance(raw, Mapping):
        raise QuantizationError(f"a calibration sample is a {type(raw).__name__}, expected a dict; {CALIBRATION_HINT}")
    missing = [n for n in input_names if n not in raw]
    if missing:
        raise QuantizationError(
            f"a calibration sample lacks model input(s) {', '.join(missing)} "
            f"(it has: {', '.join(map(str, raw)) or 'nothing'})"
        )
    return {n: np.asarray(raw[n]) for n in input_names}


class QuantizeNncf(Pass):
    """Post-training quantization with ``nncf.quantize`` for the ``openvino`` runtime."""

    name = "quantize_nncf"
    defaults: Mapping[str, JSON] = {
        "preset": "performance",
        "subset_size": 300,
        "ignored_names": [],
        "ignored_types": [],
        "fast_bias_correction": True,
        "model_type": "",          # "transformer": NNCF's scheme for attention models (keeps softmax etc. float)
    }

    def __init__(self, **config: JSON) -> None:
        merged = validate_config(self.name, config, self.defaults)
        if merged["preset"] not in PRESETS:
            raise ConfigError(
                f"pass '{self.name}': preset must be one of {', '.join(PRESETS)}, got {merged['preset']!r}")
        if merged["model_type"] not in MODEL_TYPES:
            raise ConfigError(f"pass '{self.name}': model_type must be one of {MODEL_TYPES}, "
                              f"got {merged['model_type']!r}")
        if as_int(merged["subset_size"]) < 1:
            raise ConfigError(f"pass '{self.name}': subset_size must be >= 1, got {merged['subset_size']}")
        super().__init__(**merged)

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format not in ("openvino", "onnx"):
            raise QuantizationError(f"quantize_nncf needs OpenVINO IR or ONNX, got {artifact.format} ({artifact.path})")
        if ctx.calibration is None:
            raise QuantizationError(f"NNCF quantization needs calibration data: {CALIBRATION_HINT}")
        total = min(len(ctx.calibration), self.opt_int("subset_size"))
        if total == 0:
            raise QuantizationError(f"the calibration data holds no samples: {CALIBRATION_HINT}")
        ov = import_openvino()
        nncf = import_nncf()

        model = ov.Core().read_model(str(artifact.path))
        ignored_names = self._ignored_names(model, artifact)
        input_names = [port.get_any_name() for port in model.inputs]
        # Lazy: NNCF walks the data more than once and 300 image tensors need not sit in memory.
        samples = _Limited(ctx.calibration, total)
        device = TARGET_DEVICES.get(ctx.target.options("openvino").device or "", "ANY")
        ignored = nncf.IgnoredScope(names=ignored_names, types=self.opt_strs("ignored_types"), validate=False) \
            if self.opt_strs("ignored_names") or self.opt_strs("ignored_types") else None
        try:
            quantized = nncf.quantize(
                model, nncf.Dataset(samples, lambda raw: _feed(raw, input_names)),
                preset=nncf.QuantizationPreset(self.opt_str("preset")),
                target_device=nncf.TargetDevice[device],
                subset_size=total,
                fast_bias_correction=self.opt_bool("fast_bias_correction"),
                ignored_scope=ignored,
                **({"model_type": nncf.ModelType.TRANSFORMER} if self.opt_str("model_type") == "transformer" else {}),
            )
        except QuantizationError:
            raise
        except Exception as exc:
            raise QuantizationError(
                f"NNCF could not quantize {artifact.path.name}: {type(exc).__name__}: {exc}") from exc

        ctx.workdir.mkdir(parents=True, exist_ok=True)
        xml = ctx.workdir / f"{artifact.path.stem}.int8.xml"
        # Keep the float parts NNCF left alone in float32: the fidelity gate measures INT8 alone.
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        bin_file = xml.with_suffix(".bin")
        fake_quantize = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
        ctx.log(f"quantize_nncf: {artifact.path.name} -> {xml.name} ({fake_quantize} FakeQuantize nodes)")
        excluded = bool(self.opt_strs("ignored_names") or self.opt_strs("ignored_types"))
        metadata = {
            **artifact.metadata,
            "quantizer": f"nncf {nncf.__version__}",
            "preset": self.opt_str("preset"),
            "model_type": self.opt_str("model_type") or "default",
            "target_device": device,
            "calibration_samples": total,
            "fast_bias_correction": self.opt_bool("fast_bias_correction"),
            "ignored_names": self.opt_strs("ignored_names"),
            "ignored_ops": ignored_names,
            "ignored_types": self.opt_strs("ignored_types"),
            "fake_quantize_nodes": fake_quantize,
        }
        return artifact.evolve(
            path=xml, format="openvino", precision="mixed" if excluded else "int8",
            digest=digest_files([xml, bin_file]), extra_files=(bin_file,), runtime="openvino", metadata=metadata,
        )

    def _ignored_names(self, model: Model, artifact: Artifact) -> list[str]:
        """OpenVINO op names to ignore; unknown names/types are a typo in the build config: say so.

        A name may also be an ONNX node name: OpenVINO's ONNX frontend names the ops it makes from node
        ``n`` ``n`` and ``n/...`` (a Conv with bias becomes ``n/WithoutBiases`` + ``n``), so all of them
        are ignored.
        """
        names = {op.get_friendly_name() for op in model.get_ops()}
        types = {op.get_type_name() for op in model.get_ops()}
        expanded: list[str] = []
        bad_names = []
        for name in self.opt_strs("ignored_names"):
            matches = sorted(n for n in names if n == name or n.startswith(name + "/"))
            expanded.extend(matches)
            if not matches:
                bad_names.append(name)
        bad_types = [t for t in self.opt_strs("ignored_types") if t not in types]
        problems = []
        if bad_names:
            problems.append(f"ignored_names not in the model: {', '.join(bad_names)}")
        if bad_types:
            problems.append(
                f"ignored_types not in the model: {', '.join(bad_types)} (OpenVINO op types, e.g. "
                f"{', '.join(sorted(types)[:6])})"
            )
        if problems:
            raise ConfigError(f"pass '{self.name}' on {artifact.path.name}: " + "; ".join(problems))
        return sorted(set(expanded))
