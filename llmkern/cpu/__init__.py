"""Glue from the ops to the C++ CPU kernels of ``llmkern._C`` (one file per op family).
Importing this package registers the ``cpu`` backend of each op whose kernel exists."""

import importlib
import pkgutil

from llmkern import _ext


def isa_family() -> str:
    """The family of the C++ kernels in use, which the shape rules' measured tables follow:
    "avx512" (AMX included) or "avx2" (the scalar kernels, slower than either, use the AVX2
    tables)."""
    isa = _ext._C.active_isa() if _ext.available() else "scalar"
    return "avx512" if isa.startswith("avx512") or isa == "amx" else "avx2"


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
