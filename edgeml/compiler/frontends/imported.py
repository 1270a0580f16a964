"""What an import step hands the compiler: an ONNX or TFLite file plus where it came from.

Every front-end (a torch object in the user's process, a ``.pt2`` or Hugging Face directory through the
``torch`` toolchain, a Keras/SavedModel through the ``tflite`` toolchain) writes the same export
directory (see :mod:`edgeml.toolchains.torch_export`): the model file, ``export.json``, optionally
``example.npz`` (inputs and the framework's own outputs on them) and ``assets/`` (tokenizer files).
:func:`read_export_dir` turns it into an :class:`ImportedModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeml.errors import ConversionError
from edgeml.jsonlimits import load_document
from edgeml.jsontypes import JSONDict, as_dict

INFO_FILE = "export.json"
EXAMPLE_FILE = "example.npz"
ASSETS_DIR = "assets"
MAX_INFO_BYTES = 1 << 20          # export.json is a few hundred bytes; anything near this is not ours
MAX_ASSET_BYTES = 64 << 20        # a tokenizer.json of a large vocabulary is ~20 MB


@dataclass(frozen=True)
class ImportedModel:
    """A model brought in by a front-end.

    ``path``: the ``.onnx``/``.tflite`` file the build starts from. ``name``: the default bundle name.
    ``source_name``/``source_sha256``: what the user gave (file, directory or in-memory module) for the
    bundle's provenance. ``provenance``: framework, versions, exporter, options, and the export check.
    ``assets``: files that pre/post-processing needs on the device, by file name (``tokenizer.json``,
    ``vocab.txt``, ...; empty when the source had none). ``example``: ``example.npz`` or None.
    The files may live in the export cache: read them, never change them.
    """

    path: Path
    name: str
    source_name: str
    source_sha256: str
    provenance: JSONDict                              # export.json, plus export_check once checked
    assets: Mapping[str, Path] = field(default_factory=dict)
    example: Path | None = None
    cached: bool = False                 # reused from the export cache rather than exported now


def read_export_dir(out_dir: Path, model_file: str, *, name: str, source_name: str,
                    source_sha256: str) -> ImportedModel:
    """The export directory a front-end wrote, checked: the model file exists, ``export.json`` is
    bounded JSON, assets are plain files within their size limit."""
    model = out_dir / model_file
    if not model.is_file():
        raise ConversionError(f"the exporter finished but wrote no {model_file} in {out_dir}")
    info_path = out_dir / INFO_FILE
    if not info_path.is_file():
        raise ConversionError(f"the exporter wrote no {INFO_FILE} in {out_dir}")
    info = dict(as_dict(load_document(info_path.read_bytes(), str(info_path), ConversionError,
                                 max_bytes=MAX_INFO_BYTES)))
    assets: dict[str, Path] = {}
    assets_dir = out_dir / ASSETS_DIR
    if assets_dir.is_dir():
        for path in sorted(assets_dir.iterdir()):
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_ASSET_BYTES:
                assets[path.name] = path
    example = out_dir / EXAMPLE_FILE
    return ImportedModel(path=model, name=name, source_name=source_name, source_sha256=source_sha256,
                         provenance=info, assets=assets, example=example if example.is_file() else None)
