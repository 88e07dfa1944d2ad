"""2:4 structured sparsity: the canonical compressed format and the sparse matmul ops.

Canonical format of a weight w [N, K] (K a multiple of 4) that has at most 2 non-zeros in each
group of 4 consecutive values along K:

- ``values`` [N, K/2], w's dtype: the two kept values of group g at columns 2g and 2g+1, in
  increasing position order;
- ``meta`` uint8 [N, ceil(K/8)]: a 4-bit code per group, ``idx0 | idx1 << 2`` with
  ``idx0 < idx1`` the positions (0..3) of the kept values within the group; group g is the low
  nibble of byte g // 2 when g is even, the high nibble when odd (the nibble order ``mma.sp``
  reads for 16-bit types). An unused high nibble (K % 8 == 4) is 0.

Groups with fewer than 2 non-zeros keep their non-zeros and fill up with the lowest free
positions (whose value is 0), so ``decompress_24(compress_24(w)) == w`` exactly. K that is not a
multiple of 4 is rejected; pad the weight (and x) with zero columns first.
Kernel-specific layouts are derived from this form by their own exact conversions.

Matmul contract: ``x @ W.T (+ bias)`` with W the decompressed weight, accumulated in float32
(int32 for W8A8) in any order, except that pruned weights are never multiplied: a NaN or inf in
a column of x reaches only the outputs whose weight row keeps that column (a dense product would
give 0 * inf = NaN everywhere). The references follow the dense formula, so tests compare them on
finite inputs.
"""

from __future__ import annotations

import torch

from llmkern.backends import dispatch, register, run
from llmkern.ops._checks import (
    FLOAT_DTYPES,
    check_finite,
    check_same_device,
    check_shape,
    check_tensor,
    values_checked,
)
from llmkern.ops.int8 import (
    MAX_K_W8A8,
    check_bias,
    check_w_scale,
    quantize_per_token_ref,
    w8_matmul_ref,
    w8a8_matmul_ref,
)

VALUE_DTYPES = FLOAT_DTYPES + (torch.int8,)
_DEVICES = ("cpu", "cuda")


def meta_cols(k: int) -> int:
    return -(-k // 8)


# ---------------------------------------------------------------------------------------------
# Format (reference implementations; vectorised PyTorch, any device)
# ---------------------------------------------------------------------------------------------


def first_violation(w: torch.Tensor, n: int = 2, m: int = 4):
    """(row, group) of the first group of ``m`` along K with more than ``n`` non-zeros, or None."""
    rows, k = w.shape
    counts = (w.reshape(rows, k // m, m) != 0).sum(dim=2)
    bad = (counts > n).nonzero()
    if bad.numel() == 0:
        return None
    return int(bad[0, 0]), int(bad[0, 1])


def compress_24_ref(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = w.shape
    groups = w.reshape(n, k // 4, 4)
    pos = torch.arange(4, device=w.device)
    # Non-zeros first (in position order), then zeros: the first two keys are the kept slots.
    key = (groups == 0).to(torch.int64) * 4 + pos
    kept = key.argsort(dim=2)[:, :, :2].sort(dim=2).values  # [N, G, 2], idx0 < idx1
    values = torch.gather(groups, 2, kept).reshape(n, k // 2)
    code = (kept[:, :, 0] | (kept[:, :, 1] << 2)).to(torch.uint8)  # [N, G]
    if code.shape[1] % 2:
        code = torch.nn.functional.pad(code, (0, 1))
    code = code.reshape(n, -1, 2)
    meta = (code[:, :, 0] | (code[:, :, 1] << 4)).to(torch.uint8)
    return values.contiguous(), meta.contiguous()


def unpack_meta(meta: torch.Tensor, k: int) -> torch.Tensor:
    """meta uint8 [N, ceil(K/8)] -> kept positions int64 [N, K/4, 2]."""
    m = meta.to(torch.int64)
    codes = torch.stack((m & 0xF, m >> 4), dim=2).reshape(meta.shape[0], -1)[:, : k // 4]
    return torch.stack((codes & 3, (codes >> 2) & 3), dim=2)


def decompress_24_ref(values: torch.Tensor, meta: torch.Tensor, k: int) -> torch.Tensor:
    n = values.shape[0]
    kept = unpack_meta(meta, k)
    dense = torch.zeros(n, k // 4, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(2, kept, values.reshape(n, k // 4, 2))
    return dense.reshape(n, k)


def sparse24_matmul_ref(x, values, meta, bias):
    w = decompress_24_ref(values, meta, x.shape[1])
    out = x.float() @ w.float().T
    if bias is not None:
        out = out + bias.float()[None, :]
    return out.to(x.dtype)


def sparse24_w8a8_matmul_ref(x_q, values, meta, x_scale, w_scale, bias, out_dtype):
    w_q = decompress_24_ref(values, meta, x_q.shape[1])
    return w8a8_matmul_ref(x_q, w_q, x_scale, w_scale, bias, out_dtype)


def sparse24_w8_matmul_ref(x, values, meta, w_scale, bias):
    w_q = decompress_24_ref(values, meta, x.shape[1])
    return w8_matmul_ref(x, w_q, w_scale, bias, 0)


def sparse24_w8a8_linear_ref(x, values, meta, w_scale, bias):
    x_q, x_scale = quantize_per_token_ref(x)
    return sparse24_w8a8_matmul_ref(x_q, values, meta, x_scale, w_scale, bias, x.dtype)


# The format conversions are vectorised tensor operators: the reference is the GPU path too.
register("compress_24", "reference", _DEVICES, native=True)(compress_24_ref)
register("decompress_24", "reference", _DEVICES, native=True)(decompress_24_ref)
register("sparse24_matmul", "reference", _DEVICES)(sparse24_matmul_ref)
register("sparse24_w8a8_matmul", "reference", _DEVICES)(sparse24_w8a8_matmul_ref)
register("sparse24_w8_matmul", "reference", _DEVICES)(sparse24_w8_matmul_ref)
register("sparse24_w8a8_linear", "reference", _DEVICES)(sparse24_w8a8_linear_ref)

# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("llmkern::compress_24", mutates_args=())
def _compress_24_op(w: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_24_pattern(w)  # a value check: in the op, so compiled graphs run it too (see ops/int8.py)
    return dispatch("compress_24", w.device, backend or None, w)


@_compress_24_op.register_fake
def _(w, backend):
    n, k = w.shape
    return w.new_empty((n, k // 2)), w.new_empty((n, meta_cols(k)), dtype=torch.uint8)


@torch.library.custom_op("llmkern::decompress_24", mutates_args=())
def _decompress_24_op(
    values: torch.Tensor, meta: torch.Tensor, k: int, backend: str
) -> torch.Tensor:
    check_codes(meta, k)
    return dispatch("decompress_24", values.device, backend or None, values, meta, k)


@_decompress_24_op.register_fake
def _(values, meta, k, backend):
    return values.new_empty((values.shape[0], k))


@torch.library.custom_op("llmkern::sparse24_matmul", mutates_args=())
def _sparse24_matmul_op(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    return dispatch("sparse24_matmul", x.device, backend or None, x, values, meta, bias)


@_sparse24_matmul_op.register_fake
def _(x, values, meta, bias, backend):
    return x.new_empty((x.shape[0], values.shape[0]))


def _sparse24_matmul_setup(ctx, inputs, output):
    x, values, meta, bias, _ = inputs
    ctx.save_for_backward(x, values, meta)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _sparse24_matmul_backward(ctx, grad):
    """Gradients of the masked dense layer: dx = g @ W, dvalues = (g.T @ x) at the kept
    positions (the dense weight gradient times the mask, compressed), dbias = sum of g."""
    x, values, meta = ctx.saved_tensors
    n, k = values.shape[0], x.shape[1]
    g = grad.float()
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = (g @ decompress_24_ref(values, meta, k).float()).to(x.dtype)
    if ctx.needs_input_grad[1]:
        dense = (g.T @ x.float()).reshape(n, k // 4, 4)
        grad_values = torch.gather(dense, 2, unpack_meta(meta, k)).reshape(n, k // 2)
        grad_values = grad_values.to(values.dtype)
    if ctx.needs_input_grad[3]:
        grad_bias = g.sum(0).to(ctx.bias_dtype)
    return grad_x, grad_values, None, grad_bias, None


_sparse24_matmul_op.register_autograd(
    _sparse24_matmul_backward, setup_context=_sparse24_matmul_setup
)


@torch.library.custom_op("llmkern::sparse24_w8a8_matmul", mutates_args=())
def _sparse24_w8a8_matmul_op(
    x_q: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    args = (x_q, values, meta, x_scale, w_scale, bias, out_dtype)
    if values_checked(w_scale):  # no host synchronisation per call on the GPU
        check_finite("w_scale", w_scale)
    return dispatch("sparse24_w8a8_matmul", x_q.device, backend or None, *args)


@_sparse24_w8a8_matmul_op.register_fake
def _(x_q, values, meta, x_scale, w_scale, bias, out_dtype, backend):
    return x_q.new_empty((x_q.shape[0], values.shape[0]), dtype=out_dtype)


@torch.library.custom_op("llmkern::sparse24_w8_matmul", mutates_args=())
def _sparse24_w8_matmul_op(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    if values_checked(w_scale):  # no host synchronisation per call on the GPU
        check_finite("w_scale", w_scale)
    return dispatch("sparse24_w8_matmul", x.device, backend or None, x, values, meta, w_scale, bias)


@_sparse24_w8_matmul_op.register_fake
def _(x, values, meta, w_scale, bias, backend):
    return x.new_empty((x.shape[0], values.shape[0]))


@torch.library.custom_op("llmkern::sparse24_w8a8_linear", mutates_args=())
def _sparse24_w8a8_linear_op(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    if values_checked(w_scale):  # as the other int8 2:4 ops (no GPU synchronisation)
        check_finite("w_scale", w_scale)
    args = (x, values, meta, w_scale, bias)
    return dispatch("sparse24_w8a8_linear", x.device, backend or None, *args)


@_sparse24_w8a8_linear_op.register_fake
def _(x, values, meta, w_scale, bias, backend):
    return x.new_empty((x.shape[0], values.shape[0]))


# ---------------------------------------------------------------------------------------------
# Entries for modules: no argument checks (the module validated its buffers), and the module's
# prepared weight forms (llmkern.backends.Prepared) for the kernels that use them
# ---------------------------------------------------------------------------------------------


def run_sparse24_matmul(x, values, meta, bias, prepared=None):
    args = (x, values, meta, bias)
    return run("sparse24_matmul", _sparse24_matmul_op, args, prepared, differentiable=True)


def run_sparse24_w8_matmul(x, values, meta, w_scale, bias, prepared=None):
    args = (x, values, meta, w_scale, bias)
    return run("sparse24_w8_matmul", _sparse24_w8_matmul_op, args, prepared)


def run_sparse24_w8a8_linear(x, values, meta, w_scale, bias, prepared=None):
    """float x -> per-token int8 activations -> W8A8 with the 2:4 int8 weight, in x's dtype."""
    args = (x, values, meta, w_scale, bias)
    return run("sparse24_w8a8_linear", _sparse24_w8a8_linear_op, args, prepared)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def _check_k(name: str, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k % 4 != 0:
        raise ValueError(
            f"{name}: K={k} must be a multiple of 4 for 2:4 sparsity; pad with zero columns first"
        )


def check_24_pattern(w: torch.Tensor) -> None:
    bad = first_violation(w)
    if bad is not None:
        row, group = bad
        raise ValueError(
            f"w is not 2:4 sparse: row {row}, columns {4 * group}..{4 * group + 3} have more than "
            "2 non-zeros; make it 2:4 with prune_24(w, scores) first"
        )


def check_codes(meta: torch.Tensor, k: int) -> None:
    codes = unpack_meta(meta, k)
    if bool((codes[:, :, 0] >= codes[:, :, 1]).any()):
        raise ValueError("meta holds an invalid 2:4 code (each group needs idx0 < idx1)")


def compress_24(w: torch.Tensor, *, backend: str | None = None):
    """w [N, K] that is 2:4 along K -> (values [N, K/2], meta uint8 [N, ceil(K/8)])."""
    check_tensor("w", w, ndim=2, dtypes=VALUE_DTYPES)
    _check_k("w", w.shape[1])
    return _compress_24_op(w.contiguous(), backend or "")


def check_compressed(values, meta, k: int, value_dtypes, validate_codes: bool = False) -> None:
    """Shapes and dtypes of a compressed weight. ``validate_codes`` also checks every 4-bit code
    (a pass over meta: done on decompress and module load, not on each matmul; a bad code can
    only give wrong values, never an out-of-bounds read, since positions are 2-bit)."""
    check_tensor("values", values, ndim=2, dtypes=value_dtypes)
    check_tensor("meta", meta, ndim=2, dtypes=(torch.uint8,))
    _check_k("K", k)
    n = values.shape[0]
    if values.shape[1] * 2 != k:
        raise ValueError(
            f"values must have shape [N, K/2] = [N, {k // 2}], got {tuple(values.shape)}"
        )
    check_shape("meta", meta, (n, meta_cols(k)))
    if validate_codes:
        check_codes(meta, k)


def decompress_24(values: torch.Tensor, meta: torch.Tensor, k: int | None = None, *, backend=None):
    """Inverse of :func:`compress_24`; K defaults to ``2 * values.shape[1]``."""
    check_tensor("values", values, ndim=2, dtypes=VALUE_DTYPES)
    k = 2 * values.shape[1] if k is None else k
    check_compressed(values, meta, k, VALUE_DTYPES)  # the codes are checked in the op
    check_same_device(values=values, meta=meta)
    return _decompress_24_op(values, meta, k, backend or "")


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the ``n`` highest scores of every ``m`` consecutive values along the
    last dim (ties keep the lower position). ``n:m = 2:4`` gives the 2:4 pattern."""
    check_tensor("scores", scores)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (n, m)):
        raise TypeError(f"n and m must be ints, got n={n!r}, m={m!r}")
    if not (0 < n <= m):
        raise ValueError(f"need 0 < n <= m, got n={n!r}, m={m!r}")
    k = scores.shape[-1]
    if k % m:
        raise ValueError(
            f"need K % m == 0: the last dim ({k}) is not a multiple of m={m}; pad with zeros first"
        )
    s = scores.detach().float().reshape(-1, k // m, m)
    keep = s.argsort(dim=2, descending=True, stable=True)[:, :, :n]
    return torch.zeros_like(s, dtype=torch.bool).scatter_(2, keep, True).reshape(scores.shape)


def prune_24(w: torch.Tensor, scores: torch.Tensor | None = None, n: int = 2, m: int = 4):
    """Zero all but the ``n`` highest-scoring of every ``m`` consecutive weights along K
    (scores default to |w|; ties keep the lower position). Returns the pruned weight."""
    check_tensor("w", w, ndim=2, dtypes=VALUE_DTYPES)
    # float before abs: |-128| wraps to -128 in int8 and would be pruned first.
    scores = w.detach().float().abs() if scores is None else scores
    check_tensor("scores", scores)
    check_shape("scores", scores, tuple(w.shape))
    return w * nm_mask(scores, n, m).to(w.dtype)


def _check_x_k(name, x, values):
    check_tensor("values", values, ndim=2)
    if x.shape[1] != 2 * values.shape[1]:
        raise ValueError(
            f"{name} must have K = 2 * values.shape[1] = {2 * values.shape[1]} columns, "
            f"got {tuple(x.shape)}"
        )


def sparse24_matmul(x, values, meta, bias=None, *, backend: str | None = None):
    """float x [M, K] @ W.T + bias where W [N, K] is the 2:4 weight (values, meta), x's dtype.
    Differentiable in x, values and bias (the gradient of the masked dense layer)."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    _check_x_k("x", x, values)
    check_compressed(values, meta, x.shape[1], (x.dtype,))
    check_same_device(x=x, values=values, meta=meta, bias=bias)
    check_bias(bias, values.shape[0], x.device)
    return _sparse24_matmul_op(x, values, meta, bias, backend or "")


def sparse24_w8a8_matmul(
    x_q, values, meta, x_scale, w_scale, bias=None, out_dtype=torch.float32, *, backend=None
):
    """W8A8 with a 2:4 int8 weight: the epilogue and contract of ``w8a8_matmul``."""
    check_tensor("x_q", x_q, ndim=2, dtypes=(torch.int8,))
    _check_x_k("x_q", x_q, values)
    k = x_q.shape[1]
    if k > MAX_K_W8A8:
        raise ValueError(
            f"K={k} exceeds MAX_K_W8A8={MAX_K_W8A8}: int32 accumulation could overflow"
        )
    check_compressed(values, meta, k, (torch.int8,))
    check_tensor("x_scale", x_scale, ndim=1, dtypes=(torch.float32,))
    check_shape("x_scale", x_scale, (x_q.shape[0],))
    check_w_scale(w_scale, values.shape[0], k, 0)
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be one of {FLOAT_DTYPES}, got {out_dtype}")
    check_same_device(
        x_q=x_q, values=values, meta=meta, x_scale=x_scale, w_scale=w_scale, bias=bias
    )
    check_bias(bias, values.shape[0], x_q.device)
    return _sparse24_w8a8_matmul_op(
        x_q, values, meta, x_scale, w_scale, bias, out_dtype, backend or ""
    )


def sparse24_w8_matmul(x, values, meta, w_scale, bias=None, *, backend=None):
    """Weight-only int8 with a 2:4 weight: float x [M, K], per-channel w_scale [N]."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    _check_x_k("x", x, values)
    check_compressed(values, meta, x.shape[1], (torch.int8,))
    check_w_scale(w_scale, values.shape[0], x.shape[1], 0)
    check_same_device(x=x, values=values, meta=meta, w_scale=w_scale, bias=bias)
    check_bias(bias, values.shape[0], x.device)
    return _sparse24_w8_matmul_op(x, values, meta, w_scale, bias, backend or "")
