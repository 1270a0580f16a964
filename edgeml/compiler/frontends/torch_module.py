"""The in-process PyTorch front-end: ``edgeml.compile(module, example_inputs=..., dynamic_shapes=...)``.

Runs in the user's own process, which already holds torch; edgeml never imports torch anywhere else
(an object is recognised as a torch object only when the user's process has imported torch already).
The export itself is :func:`edgeml.toolchains.torch_export.export_program`, the same code the ``torch``
toolchain runs for ``edgeml build model.pt2``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeml.compiler.frontends.imported import ImportedModel, read_export_dir
from edgeml.compiler.modelinfo import digest_files
from edgeml.errors import ConfigError, ConversionError


def is_torch_object(model: object) -> bool:
    """A ``torch.nn.Module`` or ``torch.export.ExportedProgram`` (without importing torch ourselves)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram))


def _split_example(example_inputs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    """A tensor, a tuple/list of positional inputs, a dict of keyword inputs, or ``(args, kwargs)``."""
    import torch

    if example_inputs is None:
        return (), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) == 2 and isinstance(example_inputs[0], (tuple, list)) \
                and isinstance(example_inputs[1], Mapping):
            return tuple(example_inputs[0]), dict(example_inputs[1])
        return tuple(example_inputs), {}
    raise ConfigError(f"example_inputs must be a tensor, a tuple of tensors or a dict of tensors, "
                      f"got {type(example_inputs).__name__}")


def export_torch(model: object, workdir: Path, *, example_inputs: object = None, dynamic_shapes: object = None,
                 opset: int, output_names: Sequence[str] | None = None) -> ImportedModel:
    """Export a module or ExportedProgram with ``torch.onnx.export(dynamo=True)`` into ``workdir``."""
    import torch

    from edgeml.toolchains import torch_export

    is_program = isinstance(model, torch.export.ExportedProgram)
    if not is_program and example_inputs is None:
        raise ConfigError("compiling a torch.nn.Module needs example_inputs=(tensor, ...) to trace it with; "
                          "dynamic_shapes={'x': {0: torch.export.Dim('batch')}} keeps a dimension dynamic")
    if is_program and dynamic_shapes is not None:
        raise ConfigError("dynamic_shapes belong to torch.export.export(); an ExportedProgram already has them")
    args, kwargs = _split_example(example_inputs)
    name = "exported_program" if is_program else type(model).__name__
    out_dir = workdir / "export"
    try:
        torch_export.export_program(model, args, kwargs, dynamic_shapes, out_dir, opset=opset,
                                    output_names=output_names)
    except (ConfigError, ConversionError):
        raise
    except Exception as exc:  # torch.export / onnx exporter errors come in many classes
        raise ConversionError(f"exporting {name} with torch.onnx.export(dynamo=True) failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    onnx_path = out_dir / torch_export.MODEL_FILE
    return read_export_dir(out_dir, torch_export.MODEL_FILE, name=name, source_name=f"{name} (torch, in process)",
                           source_sha256=digest_files([onnx_path]) if onnx_path.is_file() else "")
