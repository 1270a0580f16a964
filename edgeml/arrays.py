"""One name for "a numpy array of any shape and dtype", the type of model inputs and outputs.

numpy's own generic parameters default to ``Any``; spelling them here, once, lets the packages that
forbid explicit ``Any`` in their own code (the agent) annotate arrays without it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np

DType: TypeAlias = np.dtype[Any]
Array: TypeAlias = np.ndarray[Any, np.dtype[Any]]  # shape and dtype are only known at run time (from the model)
