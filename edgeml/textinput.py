"""Text in, model inputs out: the bundle's tokenizer (Hugging Face ``tokenizers``) applied on the device.

:class:`TextEncoder` loads the bundle's ``tokenizer.json`` once and turns a list of strings into the
model inputs the manifest's ``tokenizer`` entry names (``input_ids``, ``attention_mask``,
``token_type_ids``), padded to the longest text of the call or to ``max_length`` and truncated to
``max_length``, in the dtype each input wants. The ``tokenizers`` package is imported when a bundle with
a tokenizer is first used; it is part of the ``agent`` (and ``compile``) extra.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.bundle.prepost import TokenizerSpec
from edgeml.errors import BundleError, InferenceInputError, MissingExtraError

MAX_TEXTS = 1024                  # texts in one call
MAX_TEXT_CHARS = 100_000          # characters in one text (the tokenizer truncates tokens, not characters)


def load_tokenizer(path: Path) -> Any:
    """A ``tokenizers.Tokenizer`` from a tokenizer.json file (raises BundleError if it is not one)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise MissingExtraError("tokenizers", "agent", "text models") from exc
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise BundleError(f"{path.name} is not a tokenizers file (tokenizer.json): {exc}") from None


class TextEncoder:
    """Strings -> the model inputs of ``spec``. Thread-safe (a tokenizer's padding settings are per object)."""

    def __init__(self, path: Path, spec: TokenizerSpec, inputs: Sequence[TensorSpec]) -> None:
        self.spec = spec
        self._dtypes = {s.name: np.dtype(s.dtype) for s in inputs}
        self._tokenizer = load_tokenizer(path)
        self._tokenizer.enable_truncation(max_length=spec.max_length)
        pad_id, pad_token = _pad_token(self._tokenizer)
        length = spec.max_length if spec.padding == "max_length" else None
        self._tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token=pad_token)
        self._lock = threading.Lock()

    def encode(self, texts: object) -> dict[str, Array]:
        batch = check_texts(texts)
        with self._lock:  # encode_batch releases the GIL and runs in Rust threads; settings are shared
            encodings = self._tokenizer.encode_batch(batch)
        fields = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                  "token_type_ids": [e.type_ids for e in encodings]}
        return {name: np.asarray(fields[field], dtype=self._dtypes.get(name, np.dtype(np.int64)))
                for field, name in self.spec.inputs.items()}


def _pad_token(tokenizer: Any) -> tuple[int, str]:
    """The tokenizer's own padding token when its file declares one, else the usual names."""
    declared = tokenizer.padding
    if declared:
        return int(declared["pad_id"]), str(declared["pad_token"])
    for token in ("[PAD]", "<pad>", "<|pad|>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found), token
    return 0, "[PAD]"


def check_texts(texts: object) -> list[str]:
    """A non-empty list of at most MAX_TEXTS strings of at most MAX_TEXT_CHARS characters."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list | tuple) or not texts or not all(isinstance(t, str) for t in texts):
        raise InferenceInputError('text must be a non-empty list of strings, e.g. {"text": ["hello world"]}')
    if len(texts) > MAX_TEXTS:
        raise InferenceInputError(f"{len(texts)} texts in one call; at most {MAX_TEXTS} are accepted")
    longest = max(len(t) for t in texts)
    if longest > MAX_TEXT_CHARS:
        raise InferenceInputError(f"a text is {longest} characters long; at most {MAX_TEXT_CHARS} are accepted")
    return list(texts)
