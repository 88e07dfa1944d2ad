"""Argument checks shared by the ops: each raises a clear error naming the argument and what was
expected, before any kernel runs."""

from __future__ import annotations

import math
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _dtype_names(dtypes) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    ndim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    nonempty: bool = True,
) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {t.dtype}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_same_device(**tensors) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    for k, v in present.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{k} must be a torch.Tensor, got {type(v).__name__}")
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def values_checked(t: torch.Tensor) -> bool:
    """Whether the per-call checks of ``t``'s *values* run (shapes, dtypes and devices are always
    checked). Always for CPU tensors; for GPU tensors only with ``LLMKERN_DEBUG_CHECKS=1``:
    reading a value back waits for the GPU (one host synchronisation per call). Without the
    check the GPU kernels stay memory-safe and mark bad values in the output (see each op)."""
    if t.device.type == "cpu":
        return True
    return t.device.type != "meta" and os.environ.get("LLMKERN_DEBUG_CHECKS", "0") not in ("", "0")


def check_finite(name: str, t: torch.Tensor) -> None:
    """For small tensors such as scales: a non-finite value would silently poison outputs."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")


def check_float_scalar(name: str, v, *, low=None, high=None, low_open=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def check_choice(name: str, v, choices) -> None:
    if v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
