"""Loads the native extension ``llmkern._C`` once and says whether it is there and why not."""

from __future__ import annotations

import importlib

_C = None
load_error: str | None = None

try:
    import torch  # noqa: F401  (the extension links against libtorch; import it first)

    _C = importlib.import_module("llmkern._C")
except ImportError as exc:  # not built: pip install --no-build-isolation -e .
    load_error = str(exc)


def available() -> bool:
    return _C is not None


def require():
    """The loaded extension, or a RuntimeError that says how to build it."""
    if _C is None:
        raise RuntimeError(
            "llmkern's native extension llmkern._C is not built or failed to load "
            f"({load_error}); build it with `pip install --no-build-isolation -e .`"
        )
    return _C


def has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether ``torch.ops.llmkern_C.<name>`` has a kernel for ``dispatch_key`` ("CPU" or
    "CUDA"; every op's schema is registered in any build, csrc/schemas.cpp)."""
    import torch

    return (
        _C is not None
        and hasattr(torch.ops.llmkern_C, name)
        and torch._C._dispatch_has_kernel_for_dispatch_key(f"llmkern_C::{name}", dispatch_key)
    )


def native_ops(dispatch_key: str = "CPU") -> list[str]:
    """Names of the ``torch.ops.llmkern_C`` ops that have a kernel for ``dispatch_key``. Empty
    when the extension is not loaded."""
    if _C is None:
        return []
    import torch

    prefix = "llmkern_C::"
    names = (
        n[len(prefix) :] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)
    )
    return sorted(n for n in names if has_kernel(n, dispatch_key))
