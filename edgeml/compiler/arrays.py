"""The array types the compiler passes around: numpy arrays of any dtype and shape, and feeds (one
array per model input). Spelled out once so no signature falls back to ``Any``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # the aliases are strings: importing them costs no numpy import
    import numpy as np

Array: TypeAlias = "np.ndarray[tuple[int, ...], np.dtype[np.generic[object]]]"
FloatArray: TypeAlias = "np.ndarray[tuple[int, ...], np.dtype[np.float64]]"
Feeds: TypeAlias = "dict[str, Array]"
