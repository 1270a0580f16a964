"""What goes into each isolated toolchain: pinned packages, the import names whose versions we report.

A toolchain exists because its packages pin versions that clash with edgeml's own environment
(onnx2tf needs TensorFlow 2.19, numpy 1.26, onnx 1.19 and protobuf 4; edgeml runs numpy 2 and a newer
onnx). Every version here was installed and verified together; changing any of them changes the recipe
hash, and an installed toolchain with another hash is reinstalled rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass

# Bump when the install procedure itself changes (not the package list): it is part of the hash.
RECIPE_FORMAT = 1


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    packages: tuple[str, ...]            # pip requirement strings, all pinned with ==
    report: tuple[str, ...]              # distributions whose installed versions `toolchain list` shows
    entry_points: tuple[str, ...]        # console scripts that must exist in bin/ after the install
    size_hint: str = "≈2.6 GB"          # what `require` tells a user the install will cost (not hashed)

    def hash(self) -> str:
        blob = json.dumps(
            {
                "format": RECIPE_FORMAT,
                "name": self.name,
                "packages": sorted(self.packages),
                "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


TFLITE = Recipe(
    name="tflite",
    description="ONNX -> TFLite converter (onnx2tf on TensorFlow 2.19, numpy 1.26, onnx 1.19, protobuf 4)",
    # onnx2tf 1.29.24 pins its whole stack itself (tensorflow 2.19.0, tf-keras 2.19.0, numpy 1.26.4,
    # onnx 1.19.1, protobuf 4.25.5, onnxsim 0.4.36, onnx-graphsurgeon 0.5.8, ai-edge-litert 2.1.0,
    # psutil 5.9.5); we repeat the pins that matter so a future onnx2tf cannot move them silently.
    # sng4onnx is imported by onnx2tf for renaming ops but is not among its declared requirements.
    packages=(
        "onnx2tf==1.29.24",
        "tensorflow==2.19.0",
        "tf-keras==2.19.0",
        "numpy==1.26.4",
        "onnx==1.19.1",
        "protobuf==4.25.5",
        "onnxsim==0.4.36",
        "onnx-graphsurgeon==0.5.8",
        "sng4onnx==1.0.5",
        "psutil==5.9.5",
    ),
    report=("onnx2tf", "tensorflow", "numpy", "onnx", "protobuf", "onnxsim", "ai-edge-litert"),
    entry_points=("onnx2tf", "onnxsim"),
)

TORCH = Recipe(
    name="torch",
    description="PyTorch / Hugging Face -> ONNX exporter (torch 2.13.0 CPU, onnxscript, transformers)",
    # torch is pinned exactly: an open range makes pip take a multi-GB CUDA build from the index, while
    # 2.13.0's CPU wheel (≈190 MB) is what sites keep in their wheelhouse (PIP_FIND_LINKS). The rest is
    # what `pip install --dry-run` resolved beside it, pinned so the exporter's behaviour cannot move:
    # torch.onnx.export(dynamo=True) needs onnxscript (+ onnx-ir); transformers reads HF checkpoints.
    # numpy/onnx/protobuf match edgeml's own environment, so a user's process holding torch and edgeml
    # sees the same versions the toolchain exported with.
    packages=(
        "torch==2.13.0",
        "onnxscript==0.7.2",
        "onnx-ir==1.1.0",
        "onnx==1.23.2",
        "numpy==2.4.6",
        "protobuf==7.36.2",
        "ml-dtypes==0.6.0",
        "transformers==5.24.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "huggingface-hub==2.4.0",
    ),
    report=("torch", "onnxscript", "onnx", "transformers", "tokenizers", "numpy"),
    entry_points=("python",),
    size_hint="≈1.1 GB",
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (TFLITE, TORCH)}
