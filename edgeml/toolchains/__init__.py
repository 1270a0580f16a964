"""Isolated toolchains: tools whose pinned dependencies cannot live in edgeml's own environment
(the ONNX -> TFLite converter needs TensorFlow 2.19 and numpy 1.26). Each one is a virtual environment
under :func:`toolchains_dir`, installed with ``edgeml toolchain install NAME`` and run as a subprocess.
"""

from edgeml.toolchains.manager import (
    Toolchain,
    find,
    install,
    install_command,
    installed,
    is_current,
    remove,
    require,
    toolchains_dir,
)
from edgeml.toolchains.recipes import RECIPES, Recipe

__all__ = [
    "RECIPES",
    "Recipe",
    "Toolchain",
    "find",
    "install",
    "install_command",
    "installed",
    "is_current",
    "remove",
    "require",
    "toolchains_dir",
]
