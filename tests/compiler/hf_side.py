"""Torch eager's answer for a Hugging Face checkpoint, run in the torch toolchain's Python by
tests/compiler/test_frontend_hf.py (the test suite's own environment has no torch or transformers).

``python hf_side.py CHECKPOINT_DIR FEEDS.npz OUT.npz``: runs the checkpoint's model (transformers,
local files only) on the token arrays in FEEDS.npz, as given, and saves every tensor output by name.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import transformers


def main() -> None:
    directory, feeds_path, out_path = sys.argv[1:4]
    model = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
    with np.load(feeds_path) as data:
        feeds = {k: torch.from_numpy(data[k]) for k in data.files}
    with torch.no_grad():
        out = model(**feeds)
    np.savez(out_path, **{k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)})


if __name__ == "__main__":
    main()
