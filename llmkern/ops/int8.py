"""INT8 ops: per-token activation quantisation, W8A8 GEMM with a fused epilogue, and int8
weight-only GEMM.

Numerical contract (every backend matches the reference below):

- ``quantize_per_token``: per row, ``absmax = max|x|`` in float32, ``scale = absmax / 127``,
  ``q = clamp(round_half_even(x * (127 / absmax)), -127, 127)`` (the quotient ``127 / absmax``
  computed once per row in float32). A row whose quotient is not finite (all zeros, or
  ``absmax < 127 / FLT_MAX`` ~ 3.7e-37 where ``127 / absmax`` overflows) gets ``scale = 1`` and
  ``q = 0``; a row with a non-finite value gets ``scale = NaN`` and ``q = 0``, so NaN propagates
  to the GEMM output instead of silently wrong numbers.
- ``w8a8_matmul``: ``acc[m, n] = sum_k x_q[m, k] * w_q[n, k]`` exactly in int32, then
  ``out = acc * x_scale[m] * w_scale[n] + bias[n]`` in float32 (left to right), cast to
  ``out_dtype``. K is limited to :data:`MAX_K_W8A8` so that int32 cannot overflow.
- ``w8_matmul``: ``out = x @ (w_q * w_scale).T + bias`` with float32 accumulation, in x's dtype.
  ``w_scale`` is per output channel ``[N]`` or per group along K ``[N, ceil(K / group_size)]``.
"""

from __future__ import annotations

import torch

from llmkern.backends import dispatch, register
from llmkern.ops._checks import (
    FLOAT_DTYPES,
    check_choice,
    check_finite,
    check_same_device,
    check_shape,
    check_tensor,
)

# int8 operands are in [-128, 127] (callers may pass their own x_q with -128), so
# |acc| <= K * 128 * 128 <= 2**31 - 1 exactly when K <= 131071.
MAX_K_W8A8 = (2**31 - 1) // (128 * 128)
_DEVICES = ("cpu", "cuda")

# ---------------------------------------------------------------------------------------------
# References (pure PyTorch, the ground truth)
# ---------------------------------------------------------------------------------------------


def _q127(t: torch.Tensor) -> torch.Tensor:
    """127 as a 0-d tensor on t's device: ``127.0 / t`` with a Python scalar is computed as
    ``127 * (1 / t)`` (two roundings; 1 in 4 quotients differ from a true division), and CUDA
    turns ``t / 127.0`` into a multiply by the reciprocal. Tensor / tensor divides exactly."""
    return t.new_full((), 127.0)


def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    absmax = xf.abs().amax(dim=1)
    finite = torch.isfinite(absmax)
    inv = _q127(absmax) / absmax  # inf for zero and for tiny rows (absmax < 127 / FLT_MAX)
    positive = finite & torch.isfinite(inv)
    inv = torch.where(positive, inv, 0.0)
    q = torch.round(xf * inv[:, None]).clamp_(-127, 127)
    q = torch.where(finite[:, None], q, 0.0).to(torch.int8)
    scale = torch.where(positive, absmax / _q127(absmax), 1.0)
    scale = torch.where(finite, scale, float("nan"))
    return q, scale


def _epilogue(acc_f32, x_scale, w_scale, bias, out_dtype):
    out = acc_f32 * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        out = out + bias.float()[None, :]
    return out.to(out_dtype)


def int_matmul_ref(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``x_q @ w_q.T`` (int64 products, so no overflow inside the reference)."""
    return (x_q.to(torch.int64) @ w_q.to(torch.int64).T).to(torch.int32)


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


register("quantize_per_token", "reference", _DEVICES)(quantize_per_token_ref)
register("w8a8_matmul", "reference", _DEVICES)(w8a8_matmul_ref)
register("w8_matmul", "reference", _DEVICES)(w8_matmul_ref)

# ---------------------------------------------------------------------------------------------
# Custom ops (schema + fake) dispatching to the selected backend. Checks of tensor *values*
# (finite scales, here and in the other families) run inside the op, just before dispatch: the
# op body always sees real tensors, also inside a torch.compile/export graph, where the public
# function's Python checks can only look at shapes and dtypes without breaking the graph.
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
    check_finite("w_scale", w_scale)
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
    check_finite("w_scale", w_scale)
    return dispatch("w8_matmul", x.device, backend or None, x, w_q, w_scale, bias, group_size)


@_w8_matmul_op.register_fake
def _(x, w_q, w_scale, bias, group_size, backend):
    return x.new_empty((x.shape[0], w_q.shape[0]))


# ---------------------------------------------------------------------------------------------
# Public functions: check, then run
# ---------------------------------------------------------------------------------------------


def check_bias(bias, n: int, device) -> None:
    if bias is None:
        return
    check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES)
    check_shape("bias", bias, (n,))
    check_same_device(weight=torch.empty(0, device=device), bias=bias)


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
    check_tensor("w_q", w_q, ndim=2, dtypes=(torch.int8,))
    m, k = x_q.shape
    n = w_q.shape[0]
    if w_q.shape[1] != k:
        raise ValueError(
            f"w_q must have shape [N, {k}] to match x_q [M, K], got {tuple(w_q.shape)}"
        )
    if k > MAX_K_W8A8:
        raise ValueError(
            f"K={k} exceeds MAX_K_W8A8={MAX_K_W8A8}: int32 accumulation could overflow; "
            "split K into chunks and add the float outputs"
        )
    check_tensor("x_scale", x_scale, ndim=1, dtypes=(torch.float32,))
    check_shape("x_scale", x_scale, (m,))
    check_tensor("w_scale", w_scale, ndim=1, dtypes=(torch.float32,))
    check_shape("w_scale", w_scale, (n,))
    check_choice("out_dtype", out_dtype, FLOAT_DTYPES)
    check_same_device(x_q=x_q, w_q=w_q, x_scale=x_scale, w_scale=w_scale, bias=bias)
    check_bias(bias, n, x_q.device)
    return _w8a8_matmul_op(x_q, w_q, x_scale, w_scale, bias, out_dtype, backend or "")


def check_w_scale(w_scale, n: int, k: int, group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0 (0 = per channel), got {group_size!r}")
    check_tensor("w_scale", w_scale, dtypes=(torch.float32,))
    if group_size == 0:
        check_shape("w_scale", w_scale, (n,))
    else:
        check_shape("w_scale", w_scale, (n, -(-k // group_size)))


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


def _quantizable(absmax: torch.Tensor) -> torch.Tensor:
    """absmax values whose int8 scale is usable: 127 / absmax is finite in float32."""
    return torch.isfinite(_q127(absmax) / absmax)


def quantize_weight(w: torch.Tensor, group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weight quantisation: w [N, K] -> (int8 [N, K], float32 scale [N] or
    [N, ceil(K / group_size)]), ``scale = absmax / 127`` per channel or group; a group whose
    absmax is 0 or below 127 / FLT_MAX (scale would underflow) gets scale 1 and q 0."""
    check_tensor("w", w, ndim=2, dtypes=FLOAT_DTYPES)
    check_finite("w", w)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0 (0 = per channel), got {group_size!r}")
    n, k = w.shape
    wf = w.detach().float()
    if group_size == 0:
        absmax = wf.abs().amax(dim=1)
        scale = torch.where(_quantizable(absmax), absmax / _q127(absmax), 1.0)
        q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return q.contiguous(), scale
    groups = -(-k // group_size)
    padded = torch.nn.functional.pad(wf, (0, groups * group_size - k)).view(n, groups, group_size)
    absmax = padded.abs().amax(dim=2)
    scale = torch.where(_quantizable(absmax), absmax / _q127(absmax), 1.0)
    q = torch.round(padded / scale[:, :, None]).clamp_(-127, 127).to(torch.int8)
    return q.view(n, groups * group_size)[:, :k].contiguous(), scale
