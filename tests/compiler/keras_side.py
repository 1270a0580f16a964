"""A tiny Keras model made inside the TFLite toolchain (which holds TensorFlow) for
tests/compiler/test_frontend_keras.py: ``python keras_side.py OUTDIR`` writes ``tiny.keras``, the same model as a
SavedModel directory (``saved_model/``) and ``check.npz`` (a fresh input and the Keras model's own output on it)."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 3), name="image"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, activation="softmax"),
    ])
    model.save(out / "tiny.keras")
    model.export(str(out / "saved_model"), format="tf_saved_model", verbose=False)
    x = np.random.default_rng(3).standard_normal((1, 12, 12, 3)).astype(np.float32)
    np.savez(out / "check.npz", x=x, y=np.asarray(model(x)))


if __name__ == "__main__":
    main()
