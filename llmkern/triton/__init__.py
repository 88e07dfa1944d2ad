"""Triton kernels, one file per op family. Importing this package registers the ``triton``
backend of each op; triton itself is imported lazily, when a kernel first runs, so llmkern works
without it."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
