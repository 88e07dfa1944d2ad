"""Glue from the ops to the CUDA C++ kernels of ``llmkern._C`` (one file per op family).
Importing this package registers the ``cuda`` backend of each op whose kernel exists; the
kernels themselves are present only when the extension was built with CUDA."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
