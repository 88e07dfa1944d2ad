"""Per-token (per-row) symmetric int8 quantisation, bit-exact with the reference:
``q = clamp(round_half_even(x * (127 / absmax)), -127, 127)``, ``scale = absmax / 127``; or,
given a calibrated per-tensor scale ``s`` (read from device memory: no host synchronisation),
static quantisation ``q = clamp(round_half_even(x * (1 / s)), -127, 127)``, ``scale = s``. Either
way a row with a non-finite value gets ``q = 0`` and ``scale = NaN`` (as does every row when the
static scale is not finite and > 0, which the public functions check only on CPU tensors).

One program per row. A row of up to ``MAX_ONE_PASS`` elements is read once and kept in
registers; longer rows are read twice (absmax, then quantise; the second read mostly hits L2).

Exactness on the GPU needs two things the defaults do not give: IEEE division (``/`` lowers to
the approximate ``div.full.f32``; ``tl.fdiv(..., ieee_rounding=True)`` to ``div.rn.f32``) and no
FP contraction (``enable_fp_fusion=False``), since fusing ``x * inv`` into the rounding add
below would round the exact product instead of its float32 value as the reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmkern.triton.kernels.common import INTERPRET, next_pow2, rowmajor

# 1.5 * 2**23: for |y| < 2**22, (y + C) - C is y rounded half-to-even in float32 arithmetic.
_RINT_MAGIC = tl.constexpr(12582912.0)
MAX_ONE_PASS = 64 if INTERPRET else 16384  # small under the interpreter: tests both paths


@triton.jit
def _absmax_and_bad(x):
    """(max |x| over the finite entries, number of non-finite entries)."""
    ax = tl.abs(x)
    bad = (x != x) | (ax == float("inf"))
    return tl.max(tl.where(bad, 0.0, ax), axis=0), tl.sum(bad.to(tl.int32), axis=0)


@triton.jit
def _quantize(x, inv, finite):
    y = x * inv
    q = (y + _RINT_MAGIC) - _RINT_MAGIC
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    # y is NaN only as 0 * inf (a static scale whose reciprocal overflows): 0, as the reference.
    return tl.where(finite & (y == y), q, 0.0).to(tl.int8)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, static_ptr, K, stride_xm, stride_qm,
    BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr, STATIC: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        absmax, n_bad = _absmax_and_bad(x)
    else:
        absmax = 0.0
        n_bad = 0
        for k0 in range(0, K, BLOCK_K):
            xb = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            block_max, block_bad = _absmax_and_bad(xb)
            absmax = tl.maximum(absmax, block_max)
            n_bad += block_bad
    finite = n_bad == 0
    if STATIC:
        scale = tl.load(static_ptr)
        inv = tl.fdiv(tl.full((), 1.0, tl.float32), scale, ieee_rounding=True)
        # A scale that is not finite and > 0 (unchecked on the GPU): NaN outputs, not wrong ones.
        scale = tl.where((scale > 0.0) & (scale < float("inf")), scale, float("nan"))
    else:
        safe = tl.where(finite & (absmax > 0.0), absmax, 1.0)
        inv = tl.fdiv(tl.full((), 127.0, tl.float32), safe, ieee_rounding=True)
        # Zero rows, and tiny rows whose 127 / absmax overflows, quantise to 0 with scale 1.
        positive = finite & (absmax > 0.0) & (inv < float("inf"))
        inv = tl.where(positive, inv, 0.0)
        scale = tl.where(
            positive, tl.fdiv(absmax, tl.full((), 127.0, tl.float32), ieee_rounding=True), 1.0
        )
    tl.store(scale_ptr + row, tl.where(finite, scale, float("nan")))
    if ONE_PASS:
        tl.store(q_row + offs, _quantize(x, inv, finite), mask=offs < K)
    else:
        for k0 in range(0, K, BLOCK_K):
            xb = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            tl.store(q_row + k0 + offs, _quantize(xb, inv, finite), mask=k0 + offs < K)


def quantize_per_token(
    x: torch.Tensor, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 q [M, K], float32 scale [M]); dynamic per row, or static with the one-element
    float32 ``static_scale`` on x's device."""
    x = rowmajor(x)
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    block = min(next_pow2(k), MAX_ONE_PASS)
    warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
    static = static_scale is not None
    _quantize_rows_kernel[(m,)](
        x, q, scale, static_scale.reshape(1) if static else scale, k, x.stride(0), q.stride(0),
        BLOCK_K=block, ONE_PASS=k <= block, STATIC=static, num_warps=warps,
        enable_fp_fusion=False,
    )  # fmt: skip
    return q, scale
