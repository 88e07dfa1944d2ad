"""INT8 ops: per-token activation quantisation, W8A8 GEMM with a fused epilogue, and int8
weight-only GEMM.

Numerical contract (every backend matches the reference below):

- ``quantize_per_token``: per row, ``absmax = max|x|`` in float32, ``scale = absmax / 127``,
  ``q = clamp(round_half_even(x * (127 / absmax)), -127, 127)`` (the quotient ``127 / absmax``
  computed once per row in float32). Every division in this file is a correctly rounded float32
  division on every device (:func:`ieee_div`), which plain torch operators are not. A row whose
  quotient is not finite (all zeros, or ``absmax < 127 / FLT_MAX`` ~ 3.7e-37 where
  ``127 / absmax`` overflows) gets ``scale = 1`` and ``q = 0``; a row with a non-finite value gets
  ``scale = NaN`` and ``q = 0``, so NaN propagates to the GEMM output instead of silently wrong
  numbers.
- ``w8a8_matmul``: ``acc[m, n] = sum_k x_q[m, k] * w_q[n, k]`` exactly in int32, then
  ``out = acc * x_scale[m] * w_scale[n] + bias[n]`` in float32 (left to right), cast to
  ``out_dtype``. K is limited to :data:`MAX_K_W8A8` so that int32 cannot overflow.
- ``w8_matmul``: ``out = x @ (w_q * w_scale).T + bias`` with float32 accumulation, in x's dtype.
  ``w_scale`` is per output channel ``[N]`` or per group along K ``[N, ceil(K / group_size)]``.
- ``w8a8_linear``: ``quantize_per_token`` (or, given a calibrated per-tensor ``x_scale``, static
  quantisation ``q = clamp(round_half_even(x * (1 / x_scale)), -127, 127)`` with ``1 / x_scale``
  in float32 and every finite row's scale ``x_scale``) followed by ``w8a8_matmul`` with
  ``out_dtype = x.dtype``: the whole int8 forward of a linear layer in one call.
- ``w8_linear``: ``w8_matmul``.

The two ``*_linear`` ops also take ``packed``: an optional copy of ``w_q`` pre-packed once into a
backend's own layout (``llmkern.backends.prepare``; ``llmkern.cpu.int8.pack_w8a8`` / ``pack_w8``
for the cpu backend). A backend that has no packed layout, and the reference, ignore it; the
canonical ``w_q`` and scales are always passed and always define the result.
"""

from __future__ import annotations

import math

import torch

from llmkern.backends import dispatch, register, run
from llmkern.ops._checks import (
    FLOAT_DTYPES,
    check_choice,
    check_finite,
    check_same_device,
    check_shape,
    check_tensor,
    values_checked,
)

# int8 operands are in [-128, 127] (callers may pass their own x_q with -128), so
# |acc| <= K * 128 * 128 <= 2**31 - 1 exactly when K <= 131071.
MAX_K_W8A8 = (2**31 - 1) // (128 * 128)
_DEVICES = ("cpu", "cuda")

# ---------------------------------------------------------------------------------------------
# References (pure PyTorch, the ground truth)
# ---------------------------------------------------------------------------------------------


def ieee_div(a, b) -> torch.Tensor:
    """Correctly rounded float32 ``a / b`` on every device, for tensor or float a, b. Plain
    operators are not: torch computes ``float / tensor`` as ``reciprocal(tensor) * float``, and
    on CUDA ``tensor / float`` as ``tensor * (1 / float)`` (two roundings each)."""
    like = a if isinstance(a, torch.Tensor) else b
    a = a if isinstance(a, torch.Tensor) else torch.full_like(like, a)
    b = b if isinstance(b, torch.Tensor) else torch.full_like(like, b)
    return a / b


def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    absmax = xf.abs().amax(dim=1)
    finite = torch.isfinite(absmax)
    inv = ieee_div(127.0, absmax)  # inf for zero rows and tiny rows (absmax < 127 / FLT_MAX)
    positive = finite & torch.isfinite(inv)
    inv = torch.where(positive, inv, 0.0)
    q = torch.round(xf * inv[:, None]).clamp_(-127, 127)
    q = torch.where(finite[:, None], q, 0.0).to(torch.int8)
    scale = torch.where(positive, ieee_div(absmax, 127.0), 1.0)
    scale = torch.where(finite, scale, float("nan"))
    return q, scale


def _epilogue(acc_f32, x_scale, w_scale, bias, out_dtype):
    out = acc_f32 * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        out = out + bias.float()[None, :]
    return out.to(out_dtype)


def int_matmul_ref(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``x_q @ w_q.T``. float64 holds every partial sum exactly (|acc| <= K * 2**14
    < 2**53) and, unlike int64, has a matmul on CUDA too."""
    return (x_q.to(torch.float64) @ w_q.to(torch.float64).T).to(torch.int32)


def w8a8_matmul_ref(x_q, w_q, x_scale, w_scale, bias, out_dtype):
    acc = int_matmul_ref(x_q, w_q)
    return _epilogue(acc.float(), x_scale, w_scale, bias, out_dtype)


def dequantize_weight(w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 ``w_q * scale`` for per-channel (``group_size == 0``) or per-group scales."""
    if group_size == 0:
        return w_q.float() * w_scale.float()[:, None]
    scale = w_scale.float().repeat_interleave(group_size, dim=1)[:, : w_q.shape[1]]
    return w_q.float() * scale


def w8_matmul_ref(x, w_q, w_scale, bias, group_size):
    out = x.float() @ dequantize_weight(w_q, w_scale, group_size).T
    if bias is not None:
        out = out + bias.float()[None, :]
    return out.to(x.dtype)


def quantize_static_ref(
    x: torch.Tensor, x_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Static per-tensor quantisation with a calibrated scale (values beyond it saturate; a
    NaN product, 0 * inf where 1 / scale overflows, quantises to 0)."""
    xf = x.float()
    finite = torch.isfinite(xf).all(dim=1)
    scale = x_scale.float().reshape(())
    q = torch.round(xf * ieee_div(1.0, scale)).clamp_(-127, 127)
    q = torch.where(finite[:, None] & (q == q), q, 0.0).to(torch.int8)
    return q, torch.where(finite, scale, float("nan"))


def w8a8_linear_ref(x, w_q, w_scale, bias, x_scale, packed):
    q, s = quantize_per_token_ref(x) if x_scale is None else quantize_static_ref(x, x_scale)
    return w8a8_matmul_ref(q, w_q, s, w_scale, bias, x.dtype)


def w8_linear_ref(x, w_q, w_scale, bias, group_size, packed):
    return w8_matmul_ref(x, w_q, w_scale, bias, group_size)


register("quantize_per_token", "reference", _DEVICES)(quantize_per_token_ref)
register("w8a8_matmul", "reference", _DEVICES)(w8a8_matmul_ref)
register("w8_matmul", "reference", _DEVICES)(w8_matmul_ref)
register("w8a8_linear", "reference", _DEVICES)(w8a8_linear_ref)
register("w8_linear", "reference", _DEVICES)(w8_linear_ref)

# ---------------------------------------------------------------------------------------------
# Custom ops (schema + fake) dispatching to the selected backend
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("llmkern::quantize_per_token", mutates_args=())
def _quantize_per_token_op(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch("quantize_per_token", x.device, backend or None, x)


@_quantize_per_token_op.register_fake
def _(x, backend):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("llmkern::w8a8_matmul", mutates_args=())
def _w8a8_matmul_op(
    x_q: torch.Tensor,
    w_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    args = (x_q, w_q, x_scale, w_scale, bias, out_dtype)
    return dispatch("w8a8_matmul", x_q.device, backend or None, *args)


@_w8a8_matmul_op.register_fake
def _(x_q, w_q, x_scale, w_scale, bias, out_dtype, backend):
    return x_q.new_empty((x_q.shape[0], w_q.shape[0]), dtype=out_dtype)


@torch.library.custom_op("llmkern::w8_matmul", mutates_args=())
def _w8_matmul_op(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    backend: str,
) -> torch.Tensor:
    return dispatch("w8_matmul", x.device, backend or None, x, w_q, w_scale, bias, group_size)


@_w8_matmul_op.register_fake
def _(x, w_q, w_scale, bias, group_size, backend):
    return x.new_empty((x.shape[0], w_q.shape[0]))


@torch.library.custom_op("llmkern::w8a8_linear", mutates_args=())
def _w8a8_linear_op(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    x_scale: torch.Tensor | None,
    packed: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    args = (x, w_q, w_scale, bias, x_scale, packed)
    return dispatch("w8a8_linear", x.device, backend or None, *args)


@_w8a8_linear_op.register_fake
def _(x, w_q, w_scale, bias, x_scale, packed, backend):
    return x.new_empty((x.shape[0], w_q.shape[0]))


@torch.library.custom_op("llmkern::w8_linear", mutates_args=())
def _w8_linear_op(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    packed: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    args = (x, w_q, w_scale, bias, group_size, packed)
    return dispatch("w8_linear", x.device, backend or None, *args)


@_w8_linear_op.register_fake
def _(x, w_q, w_scale, bias, group_size, packed, backend):
    return x.new_empty((x.shape[0], w_q.shape[0]))


# ---------------------------------------------------------------------------------------------
# Public functions: check, then run
# ---------------------------------------------------------------------------------------------


def check_values_finite(name: str, t: torch.Tensor) -> None:
    """check_finite, in eager mode only (under torch.compile and on the meta device the tensors
    hold no values) and where it costs no host synchronisation (:func:`values_checked`)."""
    if not torch.compiler.is_compiling() and values_checked(t):
        check_finite(name, t)


def check_bias(bias, n: int, device) -> None:
    if bias is None:
        return
    check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES)
    check_shape("bias", bias, (n,))
    check_same_device(weight=torch.empty(0, device=device), bias=bias)


def check_w8a8_weight(w_q, w_scale, bias, k: int, x_name: str) -> int:
    """Checks the weight side of a W8A8 call against activations with K = k; returns N."""
    check_tensor("w_q", w_q, ndim=2, dtypes=(torch.int8,))
    n = w_q.shape[0]
    if w_q.shape[1] != k:
        raise ValueError(
            f"w_q must have shape [N, {k}] to match {x_name} [M, K], got {tuple(w_q.shape)}"
        )
    if k > MAX_K_W8A8:
        raise ValueError(
            f"K={k} exceeds MAX_K_W8A8={MAX_K_W8A8}: int32 accumulation could overflow; "
            "split K into chunks and add the float outputs"
        )
    check_tensor("w_scale", w_scale, ndim=1, dtypes=(torch.float32,))
    check_shape("w_scale", w_scale, (n,))
    check_values_finite("w_scale", w_scale)
    check_bias(bias, n, w_q.device)
    return n


def check_packed(packed, device) -> None:
    if packed is None:
        return
    check_tensor("packed", packed, ndim=1, dtypes=(torch.uint8,))
    if packed.device != device:
        raise ValueError(f"packed must be on {device} like x, got {packed.device}")


def check_static_scale(x_scale, device) -> None:
    if x_scale is None:
        return
    check_tensor("x_scale", x_scale, dtypes=(torch.float32,))
    if x_scale.numel() != 1:
        raise ValueError(
            f"x_scale (static) must hold one per-tensor value, got shape {tuple(x_scale.shape)}"
        )
    check_same_device(x=torch.empty(0, device=device), x_scale=x_scale)
    if torch.compiler.is_compiling() or not values_checked(x_scale):
        return
    value = float(x_scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"x_scale (static) must be finite and > 0, got {value}")


def quantize_per_token(x: torch.Tensor, *, backend: str | None = None):
    """x [M, K] float32/bf16/fp16 -> (int8 [M, K], float32 scale [M]); see the module doc."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    return _quantize_per_token_op(x, backend or "")


def w8a8_matmul(
    x_q: torch.Tensor,
    w_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """int8 x_q [M, K] @ int8 w_q [N, K].T with ``x_scale[m] * w_scale[n] + bias[n]`` fused."""
    check_tensor("x_q", x_q, ndim=2, dtypes=(torch.int8,))
    m, k = x_q.shape
    check_w8a8_weight(w_q, w_scale, bias, k, "x_q")
    check_tensor("x_scale", x_scale, ndim=1, dtypes=(torch.float32,))
    check_shape("x_scale", x_scale, (m,))
    check_choice("out_dtype", out_dtype, FLOAT_DTYPES)
    check_same_device(x_q=x_q, w_q=w_q, x_scale=x_scale, w_scale=w_scale, bias=bias)
    return _w8a8_matmul_op(x_q, w_q, x_scale, w_scale, bias, out_dtype, backend or "")


def check_w_scale(w_scale, n: int, k: int, group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0 (0 = per channel), got {group_size!r}")
    check_tensor("w_scale", w_scale, dtypes=(torch.float32,))
    if group_size == 0:
        check_shape("w_scale", w_scale, (n,))
    else:
        check_shape("w_scale", w_scale, (n, -(-k // group_size)))
    check_values_finite("w_scale", w_scale)


def w8_matmul(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int = 0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """float x [M, K] @ dequant(int8 w_q [N, K]).T + bias, in x's dtype (weight-only int8)."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("w_q", w_q, ndim=2, dtypes=(torch.int8,))
    n, k = w_q.shape
    if x.shape[1] != k:
        raise ValueError(f"x must have shape [M, {k}] to match w_q [N, K], got {tuple(x.shape)}")
    check_w_scale(w_scale, n, k, group_size)
    check_same_device(x=x, w_q=w_q, w_scale=w_scale, bias=bias)
    check_bias(bias, n, x.device)
    return _w8_matmul_op(x, w_q, w_scale, bias, group_size, backend or "")


def w8a8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    x_scale: torch.Tensor | None = None,
    packed: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """float x [M, K] -> int8 activations (dynamic per token, or static with a calibrated
    per-tensor ``x_scale``) -> W8A8 GEMM with int8 w_q [N, K] -> [M, N] in x's dtype.

    ``packed`` is an optional pre-packed copy of ``w_q`` for the backend (the cpu backend packs
    on every call without it); see the module docstring."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_w8a8_weight(w_q, w_scale, bias, x.shape[1], "x")
    check_same_device(x=x, w_q=w_q, w_scale=w_scale, bias=bias)
    check_static_scale(x_scale, x.device)
    check_packed(packed, x.device)
    return _w8a8_linear_op(x, w_q, w_scale, bias, x_scale, packed, backend or "")


def w8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int = 0,
    packed: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``w8_matmul`` with an optional pre-packed copy of ``w_q`` and its scales for the
    backend (``llmkern.cpu.int8.pack_w8``)."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("w_q", w_q, ndim=2, dtypes=(torch.int8,))
    n, k = w_q.shape
    if x.shape[1] != k:
        raise ValueError(f"x must have shape [M, {k}] to match w_q [N, K], got {tuple(x.shape)}")
    check_w_scale(w_scale, n, k, group_size)
    check_same_device(x=x, w_q=w_q, w_scale=w_scale, bias=bias)
    check_bias(bias, n, x.device)
    check_packed(packed, x.device)
    return _w8_linear_op(x, w_q, w_scale, bias, group_size, packed, backend or "")


def run_w8a8_linear(x, w_q, w_scale, bias, x_scale, packed) -> torch.Tensor:
    """:func:`w8a8_linear` without argument checks, for modules (llmkern.backends.run)."""
    return run("w8a8_linear", _w8a8_linear_op, (x, w_q, w_scale, bias, x_scale, packed))


def run_w8_linear(x, w_q, w_scale, bias, group_size, packed) -> torch.Tensor:
    """:func:`w8_linear` without argument checks, for modules (llmkern.backends.run)."""
    return run("w8_linear", _w8_linear_op, (x, w_q, w_scale, bias, group_size, packed))


def _quantizable(absmax: torch.Tensor) -> torch.Tensor:
    """absmax values whose int8 scale is usable: 127 / absmax is finite in float32."""
    return torch.isfinite(torch.full_like(absmax, 127.0) / absmax)


def quantize_weight(w: torch.Tensor, group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weight quantisation: w [N, K] -> (int8 [N, K], float32 scale [N] or
    [N, ceil(K / group_size)]), ``scale = absmax / 127`` per channel or group; a group whose
    absmax is 0 or below 127 / FLT_MAX (scale would underflow) gets scale 1 and q 0."""
    check_tensor("w", w, ndim=2, dtypes=FLOAT_DTYPES)
    check_values_finite("w", w)  # eager only: QAT calls this in a compiled forward
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0 (0 = per channel), got {group_size!r}")
    n, k = w.shape
    wf = w.detach().float()
    if group_size == 0:
        absmax = wf.abs().amax(dim=1)
        scale = torch.where(_quantizable(absmax), ieee_div(absmax, 127.0), 1.0)
        q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return q.contiguous(), scale
    groups = -(-k // group_size)
    padded = torch.nn.functional.pad(wf, (0, groups * group_size - k)).view(n, groups, group_size)
    absmax = padded.abs().amax(dim=2)
    scale = torch.where(_quantizable(absmax), ieee_div(absmax, 127.0), 1.0)
    q = torch.round(padded / scale[:, :, None]).clamp_(-127, 127).to(torch.int8)
    return q.view(n, groups * group_size)[:, :k].contiguous(), scale
