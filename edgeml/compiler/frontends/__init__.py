"""The ``import`` step: turn what the user has into an ONNX or TFLite file the compiler builds from.

| input | front-end | where it runs |
| --- | --- | --- |
| ``.onnx``, ``.tflite`` | none (native) | — |
| ``torch.nn.Module`` / ``ExportedProgram`` object | :mod:`torch_module` | the user's own process |
| ``.pt2`` (``torch.export.save``) | :mod:`toolchain_export` | ``torch`` toolchain |
| Hugging Face checkpoint directory | :mod:`toolchain_export` | ``torch`` toolchain |
| Keras ``.keras``/``.h5``, SavedModel directory | :mod:`toolchain_export` | ``tflite`` toolchain |

Every front-end returns an :class:`ImportedModel`: the file, the framework/versions/options for the
bundle's provenance (with the export checked against the framework's own outputs, :mod:`export_check`),
and ``assets`` (tokenizer files of a Hugging Face checkpoint) for the bundle's pre/post-processing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from edgeml.compiler.frontends import detect
from edgeml.compiler.frontends.export_check import check_export
from edgeml.compiler.frontends.imported import ImportedModel
from edgeml.compiler.frontends.torch_module import is_torch_object
from edgeml.errors import ConfigError

__all__ = ["DEFAULT_OPSET", "ImportedModel", "import_model", "is_torch_object", "needs_import"]

DEFAULT_OPSET = 18   # the exporters' opset, lowered to the target's max_opset when that is lower


def needs_import(model: object) -> bool:
    """Whether ``model`` goes through a front-end (a torch object, or a path that is not .onnx/.tflite)."""
    if is_torch_object(model):
        return True
    if isinstance(model, (str, Path)):
        path = Path(model)
        return path.is_dir() or path.suffix.lower() not in detect.NATIVE
    return False


def import_model(model: object, workdir: Path, *, opset: int = DEFAULT_OPSET, example_inputs: object = None,
                 dynamic_shapes: object = None, output_names: Sequence[str] | None = None,
                 log: Callable[[str], None] = lambda line: None, use_cache: bool = True) -> ImportedModel:
    """Run the front-end for ``model`` and check its export; see the table above."""
    if is_torch_object(model):
        from edgeml.compiler.frontends.torch_module import export_torch

        log(f"import: exporting {type(model).__name__} with torch.onnx.export(dynamo=True), opset {opset}")
        imported = export_torch(model, workdir, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes,
                                opset=opset, output_names=output_names)
    elif isinstance(model, (str, Path)):
        from edgeml.compiler.frontends.toolchain_export import export_with_toolchain

        path = Path(model)
        kind = detect.source_kind(path)
        if example_inputs is not None or dynamic_shapes is not None:
            raise ConfigError("example_inputs/dynamic_shapes apply to torch objects; a saved model "
                              f"({path.name}) carries its own")
        imported = export_with_toolchain(kind, path, workdir, opset=opset, log=log, use_cache=use_cache)
    else:
        raise ConfigError(f"edgeml cannot import a {type(model).__name__}; give a path or a torch object")
    check = check_export(imported)
    log(f"import: export check {check}")
    return replace(imported, provenance={**imported.provenance, "export_check": check})
