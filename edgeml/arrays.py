"""One name for "a numpy array of any shape and dtype", the type of model inputs and outputs, and the
other array shapes the compiler and the agent pass around.

numpy's own generic parameters default to ``Any``; spelling them here, once, lets the packages that
forbid explicit ``Any`` in their own code (the agent, the compiler) annotate arrays without it. The
aliases are strings, so importing this module costs no numpy import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy as np

DType: TypeAlias = "np.dtype[Any]"
Array: TypeAlias = "np.ndarray[Any, np.dtype[Any]]"   # shape and dtype are only known at run time (the model's)
FloatArray: TypeAlias = "np.ndarray[tuple[int, ...], np.dtype[np.float64]]"
Feeds: TypeAlias = "dict[str, Array]"                  # one array per model input
