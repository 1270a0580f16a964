"""What kind of model a path on disk is, and a digest of it for the bundle's provenance.

Native inputs (``.onnx``, ``.tflite``) go straight to the ``load`` pass; everything else names the
front-end that turns it into one. A path that is none of them gets an error saying what edgeml takes
and how to produce it (a ``.pt`` file, say, is a pickle edgeml will not unpickle).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgeml.errors import ConfigError
from edgeml.fileio import sha256_file

NATIVE = {".onnx": "onnx", ".tflite": "tflite"}
PT2 = "pt2"                    # a saved torch.export.ExportedProgram
HUGGINGFACE = "huggingface"    # a checkpoint directory: config.json + weights (+ tokenizer files)
KERAS = "keras"                # a .keras / .h5 Keras model file
SAVED_MODEL = "saved_model"    # a TensorFlow SavedModel directory
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")

_HOW_TO = ("edgeml builds from .onnx, .tflite, .pt2 (torch.export.save), a Hugging Face checkpoint directory "
           "(config.json + model.safetensors), a Keras .keras/.h5 file or a TensorFlow SavedModel directory")


def source_kind(path: Path) -> str:
    """``onnx``/``tflite`` for native models, else the front-end's kind; :class:`ConfigError` otherwise."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return SAVED_MODEL
        if (path / "config.json").is_file():
            if any((path / w).is_file() for w in HF_WEIGHTS):
                return HUGGINGFACE
            raise ConfigError(f"{path} has a config.json but no weights ({' or '.join(HF_WEIGHTS)}): "
                              "copy the checkpoint's weight files next to it")
        raise ConfigError(f"{path} is a directory but neither a Hugging Face checkpoint (config.json + weights) "
                          f"nor a SavedModel (saved_model.pb). {_HOW_TO}")
    if not path.is_file():
        raise ConfigError(f"model {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in NATIVE:
        return NATIVE[suffix]
    if suffix == ".pt2":
        return PT2
    if suffix in (".keras", ".h5"):
        return KERAS
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise ConfigError(f"{path}: a {suffix} file is a pickled state dict or TorchScript, which edgeml does "
                          "not unpickle. Save an ExportedProgram instead: torch.export.save(torch.export.export("
                          "model, example_args), 'model.pt2'), or call edgeml.compile(module, example_inputs=...) "
                          "in Python")
    raise ConfigError(f"{path}: unknown model type '{suffix}'. {_HOW_TO}")


def digest_source(path: Path) -> str:
    """sha256 of a model file, or of a directory: every file's relative name and sha256, in name order."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
        h.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return h.hexdigest()
