"""Export PyTorch models to ONNX with torch's own exporter (``torch.onnx.export(..., dynamo=True)``).

This file runs in two places, so it imports only the standard library at module level:

- in the ``torch`` toolchain, as a script (``python torch_export.py pt2|hf SOURCE OUTDIR``), for
  ``edgeml build model.pt2`` and ``edgeml build HF_DIR``: edgeml itself is not installed there;
- in the user's own process (which already holds torch), imported by
  :mod:`edgeml.compiler.frontends.torch_module` for ``edgeml.compile(module, example_inputs=...)``.

Either way the result is a directory: ``model.onnx``, ``example.npz`` (the example inputs as
``in/NAME`` and torch eager's outputs on them as ``out/NAME``, so edgeml can check the export),
``export.json`` (framework, versions, options) and, for a Hugging Face checkpoint, ``assets/`` with the
tokenizer files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_OPSET = 18                  # read by ONNX Runtime, OpenVINO and TensorRT 8.6+ alike
MODEL_FILE = "model.onnx"
EXAMPLE_FILE = "example.npz"
INFO_FILE = "export.json"
ASSETS_DIR = "assets"
# what a Hugging Face directory may hold besides weights that pre/post-processing needs on the device
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
                   "added_tokens.json", "preprocessor_config.json")
# tokenized, they trace the export and become the build's samples when no calibration data is given
EXAMPLE_SENTENCES = ("Edge devices run text models as much as image models.",
                     "A short one.",
                     "The quick brown fox jumps over the lazy dog.",
                     "How far is the nearest train station from here?",
                     "Quantization trades a little accuracy for a lot of speed.",
                     "I loved this film; the ending surprised everyone in the room.",
                     "Temperatures will drop below freezing tonight in the north.",
                     "Please restart the device after the update has finished.")
_TWO_GB = 2**31 - 1


def versions(*dists: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in dists:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _flat_tensors(value: Any) -> list[Any]:
    """The tensors of a forward's output in order (a tensor, or nested tuples/lists/dicts of them)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flat_tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat_tensors(v)]
    return []


def _axis_names(dynamic_shapes: Any, input_names: Sequence[str]) -> dict[tuple[str, int], str]:
    """(input name, axis) -> the name the user gave that dynamic dimension (``Dim("batch")`` or a
    string). ``dynamic_shapes`` is keyed by the forward's argument names (the ONNX input names) or is a
    sequence in argument order."""
    if dynamic_shapes is None:
        return {}
    pairs = dynamic_shapes.items() if isinstance(dynamic_shapes, Mapping) \
        else zip(input_names, dynamic_shapes, strict=False)
    names: dict[tuple[str, int], str] = {}
    for input_name, spec in pairs:
        if isinstance(spec, Mapping):
            items = list(spec.items())
        elif isinstance(spec, (tuple, list)):
            items = list(enumerate(spec))
        else:
            continue
        for axis, dim in items:
            name = dim if isinstance(dim, str) else getattr(dim, "__name__", None)
            if name and not str(name).startswith("_"):
                names[(str(input_name), int(axis))] = str(name)
    return names


def _rename_dims(path: Path, axis_names: Mapping[tuple[str, int], str]) -> None:
    """Give the exporter's symbols (``s18``) the user's names (``batch``) everywhere in the graph, so
    the bundle's manifest and edgeml's errors speak of ``batch`` and ``sequence``."""
    if not axis_names:
        return
    import onnx

    model = onnx.load(str(path))
    mapping: dict[str, str] = {}
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and (value.name, axis) in axis_names:
                mapping.setdefault(dim.dim_param, axis_names[(value.name, axis)])
    if not mapping:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    onnx.save_model(model, str(path))


def _save_example(out_dir: Path, inputs: Mapping[str, Any], outputs: Sequence[Any],
                  output_names: Sequence[str]) -> None:
    import numpy as np

    arrays = {f"in/{k}": v.detach().cpu().numpy() for k, v in inputs.items()}
    arrays.update({f"out/{n}": t.detach().cpu().numpy() for n, t in zip(output_names, outputs, strict=True)})
    np.savez(out_dir / EXAMPLE_FILE, **arrays)


def export_program(model: Any, args: Sequence[Any], kwargs: Mapping[str, Any], dynamic_shapes: Any,
                   out_dir: Path, *, opset: int = DEFAULT_OPSET, output_names: Sequence[str] | None = None,
                   ) -> dict[str, Any]:
    """Export a ``torch.nn.Module`` (with example ``args``/``kwargs``) or an ``ExportedProgram`` into
    ``out_dir``. Returns the export's description (also written to ``export.json``)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, torch.export.ExportedProgram):
        program, kind = model, "ExportedProgram"
        if not args and not kwargs and program.example_inputs is not None:
            args, kwargs = program.example_inputs
    else:
        model.eval()
        kind = type(model).__qualname__
        program = torch.export.export(model, tuple(args), kwargs=dict(kwargs), dynamic_shapes=dynamic_shapes,
                                      strict=False)
    input_names = list(program.graph_signature.user_inputs)
    with torch.no_grad():
        outputs = _flat_tensors(program.module()(*args, **kwargs)) if (args or kwargs) else []
    names = list(output_names or [f"output_{i}" for i in range(len(program.graph_signature.user_outputs))])
    weights = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    torch.onnx.export(program, (), str(out_dir / MODEL_FILE), dynamo=True, opset_version=opset,
                      output_names=names, external_data=weights > _TWO_GB, verbose=False)
    _rename_dims(out_dir / MODEL_FILE, _axis_names(dynamic_shapes, input_names))
    if outputs:
        feeds = {**dict(zip(input_names, args, strict=False)), **kwargs}
        _save_example(out_dir, feeds, outputs, names)
    info = {
        "framework": "pytorch",
        "source_kind": kind,
        "exporter": "torch.onnx.export(dynamo=True)",
        "versions": versions("torch", "onnxscript", "onnx", "transformers"),
        "options": {"opset": opset, "dynamic_shapes": _describe(dynamic_shapes), "output_names": names},
        "inputs": input_names,
        "example_checked": bool(outputs),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


def _describe(dynamic_shapes: Any) -> Any:
    """dynamic_shapes as JSON: each ``Dim`` by its name and range."""
    if dynamic_shapes is None or isinstance(dynamic_shapes, (str, int, float, bool)):
        return dynamic_shapes
    if isinstance(dynamic_shapes, Mapping):
        return {str(k): _describe(v) for k, v in dynamic_shapes.items()}
    if isinstance(dynamic_shapes, (tuple, list)):
        return [_describe(v) for v in dynamic_shapes]
    name = getattr(dynamic_shapes, "__name__", None)
    low, high = getattr(dynamic_shapes, "min", None), getattr(dynamic_shapes, "max", None)
    return {"dim": name, "min": low, "max": high if isinstance(high, int) and high < 2**62 else None}


def export_pt2(source: Path, out_dir: Path, opset: int) -> dict[str, Any]:
    """A saved ExportedProgram (``torch.export.save``): its own example inputs check the export."""
    import torch

    program = torch.export.load(str(source))
    info = export_program(program, (), {}, None, out_dir, opset=opset)
    info["source_kind"] = "torch.export.save (.pt2)"
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


def _hf_model(directory: Path) -> tuple[Any, Any, str]:
    """The checkpoint's model class from config.json (``architectures``), else ``AutoModel``."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    architectures = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, architectures[0], None) if architectures else None
    cls = cls or transformers.AutoModel
    model = cls.from_pretrained(str(directory), local_files_only=True).eval()
    return model, config, cls.__name__


def export_hf(directory: Path, out_dir: Path, opset: int) -> dict[str, Any]:
    """A Hugging Face checkpoint directory: its model class, tokenized example sentences, the batch and
    sequence dimensions dynamic, every tensor of the model's output named as transformers names it."""
    import torch
    import transformers

    model, config, class_name = _hf_model(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    encoded = dict(tokenizer(list(EXAMPLE_SENTENCES), padding=True, return_tensors="pt"))
    accepted = _forward_params(model)
    feeds = {k: v for k, v in encoded.items() if k in accepted}
    with torch.no_grad():
        reference = model(**feeds)
    output_keys = [k for k, v in reference.items() if isinstance(v, torch.Tensor)]
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=int(getattr(config, "max_position_embeddings", 512) or 512))
    dynamic = {k: {0: batch, 1: sequence} for k in feeds}
    # the model itself, called by keyword: transformers registers its ModelOutput as a pytree, so the
    # exported outputs are the output's tensors in order, named below as transformers names them
    program = torch.export.export(model, (), kwargs=feeds, dynamic_shapes=dynamic, strict=False)
    if len(program.graph_signature.user_outputs) != len(output_keys):
        output_keys = [f"output_{i}" for i in range(len(program.graph_signature.user_outputs))]
    info = export_program(program, (), feeds, {k: {0: "batch", 1: "sequence"} for k in feeds}, out_dir,
                          opset=opset, output_names=output_keys)
    assets = out_dir / ASSETS_DIR
    assets.mkdir(exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            shutil.copyfile(directory / name, assets / name)
            copied.append(name)
    info.update(source_kind=f"Hugging Face checkpoint ({class_name}, model_type {config.model_type})",
                assets=copied, tokenizer=type(tokenizer).__name__)
    info["options"]["example_sentences"] = list(EXAMPLE_SENTENCES)
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a PyTorch model to ONNX (edgeml's torch toolchain).")
    parser.add_argument("kind", choices=("pt2", "hf"))
    parser.add_argument("source", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ns = parser.parse_args(argv)
    export = export_pt2 if ns.kind == "pt2" else export_hf
    info = export(ns.source, ns.out_dir, ns.opset)
    print(json.dumps({"ok": True, "inputs": info["inputs"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
