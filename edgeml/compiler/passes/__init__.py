"""Built-in compiler passes. Every module in this package defines one pass; importing the package
imports them all, which registers them (see :mod:`edgeml.compiler.passes.base`). Adding a pass means
adding one module here and nothing else. Vendor SDKs are imported inside each pass's ``run``.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
