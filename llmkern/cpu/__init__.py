"""Glue from the ops to the C++ CPU kernels of ``llmkern._C`` (one file per op family).
Importing this package registers the ``cpu`` backend of each op whose kernel exists."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
