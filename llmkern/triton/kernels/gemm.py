"""One GEMM family for every llmkern matmul: ``out = epilogue(x @ W.T)`` with

- x [M, K]: int8 (W8A8) or float32/bf16/fp16;
- W [N, K]: dense (int8 or float) or 2:4 compressed (values [N, K/2] + meta, see
  llmkern.ops.sparse24), expanded to dense tiles in registers, never in memory;
- epilogue in float32: ``acc * x_scale[m] * w_scale[n] + bias[n]``, each factor optional, cast
  to the output dtype. Per-group weight scales (weight-only int8) are applied inside the K loop.

Two kernels:

- ``_gemm_kernel``: tiled ``tl.dot`` (int8 x int8 -> int32 on tensor cores, or float with float32
  accumulation) with grouped tile order for L2 reuse; autotuned per kind of dot (int8, 16-bit,
  float32) and separately for small M (2..64, weight-read bound) and large M (compute bound).
- ``_gemv_kernel``: M == 1 (decode). Memory bound: each program streams BLOCK_N weight rows
  once with wide K chunks and reduces in registers on the CUDA cores; for 2:4 weights it gathers
  the two x values each kept weight multiplies, so only the kept values and metadata are read.

float32 x uses exact float32 dot products (``input_precision="ieee"``), not TF32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmkern.triton.kernels.common import AUTOTUNE, INTERPRET, next_pow2, rowmajor

# The interpreter multiplies bf16 tiles as raw 16-bit integers: there, bf16 dots run on float32
# copies (bf16 products are exact in float32, so the result is the same up to summation order).
_BF16_DOT_IN_F32 = tl.constexpr(INTERPRET)


@triton.jit
def _float_dot(a, b_f32, acc):
    """acc + a @ b with a's dtype on the tensor cores (float32: exact, not TF32)."""
    if _BF16_DOT_IN_F32 and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b_f32, acc, input_precision="ieee")
    else:
        return tl.dot(a, b_f32.to(a.dtype), acc, input_precision="ieee")


@triton.jit
def _sparse_tile(
    values_ptr,
    meta_ptr,
    rows,
    n_ok,
    k0,
    K,
    stride_vn,
    stride_mn,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Dense [BLOCK_N, BLOCK_K] tile (columns k0..) of a 2:4 weight, built in registers."""
    G: tl.constexpr = BLOCK_K // 4
    offs_v = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    vals = tl.load(
        values_ptr + rows * stride_vn + offs_v[None, :],
        mask=n_ok & (offs_v[None, :] < K // 2),
        other=0,
    )
    v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, G, 2)))
    i0, i1 = _positions(meta_ptr, rows, n_ok, k0, K, stride_mn, BLOCK_N, BLOCK_K)
    zero = tl.zeros_like(v0)
    # With idx0 < idx1, position 0 can only hold v0 and position 3 only v1.
    d0 = tl.where(i0 == 0, v0, zero)
    d1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, zero))
    d2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, zero))
    d3 = tl.where(i1 == 3, v1, zero)
    # join(join(d0, d2), join(d1, d3))[n, g, j, i] = d_{2j+i}: row-major flattening puts
    # d_p at column 4g + p.
    dense = tl.join(tl.join(d0, d2), tl.join(d1, d3))
    return tl.reshape(dense, (BLOCK_N, BLOCK_K))


@triton.jit
def _positions(
    meta_ptr, rows, n_ok, k0, K, stride_mn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    """Kept positions (idx0, idx1), each [BLOCK_N, BLOCK_K // 4], of the 4-groups of columns
    k0.. : group g's 4-bit code is the low nibble of meta byte g // 2 for even g, else high."""
    offs_b = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    byte = tl.load(
        meta_ptr + rows * stride_mn + offs_b[None, :],
        mask=n_ok & (offs_b[None, :] < (K + 7) // 8),
        other=0,
    ).to(tl.int32)
    code = tl.reshape(tl.join(byte & 15, byte >> 4), (BLOCK_N, BLOCK_K // 4))
    return code & 3, code >> 2


@triton.jit
def _group_scales(
    ws_ptr,
    rows,
    n_ok,
    k0,
    K,
    stride_sn,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Scales [BLOCK_N, BLOCK_K] of columns k0.. when groups of GROUP columns cut the tile."""
    if BLOCK_K % GROUP == 0:
        # Whole groups: load each group's scale once and broadcast it along K.
        NG: tl.constexpr = BLOCK_K // GROUP
        offs_g = k0 // GROUP + tl.arange(0, NG)
        s = tl.load(
            ws_ptr + rows * stride_sn + offs_g[None, :],
            mask=n_ok & (offs_g[None, :] < tl.cdiv(K, GROUP)),
            other=0.0,
        )
        s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, NG, GROUP)), (BLOCK_N, BLOCK_K))
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        s = tl.load(
            ws_ptr + rows * stride_sn + (offs_k // GROUP)[None, :],
            mask=n_ok & (offs_k[None, :] < K),
            other=0.0,
        )
    return s


@triton.jit
def _epilogue(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    xs_ptr,
    ws_ptr,
    bias_ptr,
    out_ptr,
    stride_om,
    HAS_XS: tl.constexpr,
    PER_CHANNEL_WS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """out = acc * x_scale[m] * w_scale[n] + bias[n] in float32 (left to right), then cast."""
    m_ok = offs_m < M
    n_ok = offs_n < N
    out = acc.to(tl.float32)
    if HAS_XS:
        out = out * tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0)[:, None]
    if PER_CHANNEL_WS:
        out = out * tl.load(ws_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _gemm_kernel(
    x_ptr,
    w_ptr,
    meta_ptr,
    xs_ptr,
    ws_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_mn,
    stride_sn,
    stride_om,
    M_KEY,  # power-of-two bucket of M: the autotuning key, so each new M does not retune
    SPARSE: tl.constexpr,
    INT8_DOT: tl.constexpr,
    HAS_XS: tl.constexpr,
    HAS_WS: tl.constexpr,
    WS_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped order: GROUP_M consecutive row tiles share each column tile while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = (offs_m < M)[:, None]
    n_ok = (offs_n < N)[:, None]
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_rows = offs_n.to(tl.int64)[:, None]

    if INT8_DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_rows + offs_k[None, :], mask=m_ok & (offs_k[None, :] < K), other=0)
        if SPARSE:
            w = _sparse_tile(
                w_ptr, meta_ptr, w_rows, n_ok, k0, K, stride_wn, stride_mn, BLOCK_N, BLOCK_K
            )
        else:
            w = tl.load(
                w_ptr + w_rows * stride_wn + offs_k[None, :],
                mask=n_ok & (offs_k[None, :] < K),
                other=0,
            )
        if INT8_DOT:
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
        else:
            # Through float32: exact for int8, and the interpreter mis-converts int8 -> bf16.
            wf = w.to(tl.float32)
            if WS_GROUP == 0:
                acc = _float_dot(a, tl.trans(wf), acc)
            elif WS_GROUP % BLOCK_K == 0:
                # The tile lies in one scale group: scale the partial product per column.
                s = tl.load(ws_ptr + w_rows * stride_sn + k0 // WS_GROUP, mask=n_ok, other=0.0)
                acc += _float_dot(a, tl.trans(wf), tl.zeros_like(acc)) * tl.trans(s)
            else:
                s = _group_scales(
                    ws_ptr, w_rows, n_ok, k0, K, stride_sn, WS_GROUP, BLOCK_N, BLOCK_K
                )
                acc = _float_dot(a, tl.trans(wf * s), acc)
    _epilogue(
        acc,
        offs_m,
        offs_n,
        M,
        N,
        xs_ptr,
        ws_ptr,
        bias_ptr,
        out_ptr,
        stride_om,
        HAS_XS,
        HAS_WS and WS_GROUP == 0,
        HAS_BIAS,
    )


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    meta_ptr,
    xs_ptr,
    ws_ptr,
    bias_ptr,
    out_ptr,
    N,
    K,
    stride_wn,
    stride_mn,
    stride_sn,
    SPARSE: tl.constexpr,
    INT8_DOT: tl.constexpr,
    HAS_XS: tl.constexpr,
    HAS_WS: tl.constexpr,
    WS_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = (offs_n < N)[:, None]
    w_rows = offs_n.to(tl.int64)[:, None]
    # Partial products stay per lane across the K loop; one reduction at the end.
    if INT8_DOT:
        acc_ty: tl.constexpr = tl.int32
    else:
        acc_ty: tl.constexpr = tl.float32
    if SPARSE:
        acc = tl.zeros((BLOCK_N, BLOCK_K // 4), dtype=acc_ty)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=acc_ty)
    for k0 in range(0, K, BLOCK_K):
        if SPARSE:
            G: tl.constexpr = BLOCK_K // 4
            offs_v = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            vals = tl.load(
                w_ptr + w_rows * stride_wn + offs_v[None, :],
                mask=n_ok & (offs_v[None, :] < K // 2),
                other=0,
            )
            v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, G, 2)))
            i0, i1 = _positions(meta_ptr, w_rows, n_ok, k0, K, stride_mn, BLOCK_N, BLOCK_K)
            col = (k0 + 4 * tl.arange(0, G))[None, :]
            ok = n_ok & (col < K)
            x0 = tl.load(x_ptr + col + i0, mask=ok, other=0)
            x1 = tl.load(x_ptr + col + i1, mask=ok, other=0)
            acc += v0.to(acc_ty) * x0.to(acc_ty) + v1.to(acc_ty) * x1.to(acc_ty)
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            w = tl.load(
                w_ptr + w_rows * stride_wn + offs_k[None, :], mask=n_ok & k_ok[None, :], other=0
            )
            xk = tl.load(x_ptr + offs_k, mask=k_ok, other=0)
            prod = w.to(acc_ty) * xk.to(acc_ty)[None, :]
            if WS_GROUP == 0:
                acc += prod
            elif WS_GROUP % BLOCK_K == 0:
                s = tl.load(ws_ptr + w_rows * stride_sn + k0 // WS_GROUP, mask=n_ok, other=0.0)
                acc += prod * s
            else:
                acc += prod * _group_scales(
                    ws_ptr, w_rows, n_ok, k0, K, stride_sn, WS_GROUP, BLOCK_N, BLOCK_K
                )
    out = tl.sum(acc, axis=1)[None, :]  # [1, BLOCK_N]
    _epilogue(
        out,
        tl.arange(0, 1),
        offs_n,
        1,
        N,
        xs_ptr,
        ws_ptr,
        bias_ptr,
        out_ptr,
        0,
        HAS_XS,
        HAS_WS and WS_GROUP == 0,
        HAS_BIAS,
    )


def _cfg(bm, bn, bk, warps, stages, group_m=8):
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m}
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# Per kind of dot product, for M > 64 (compute bound) and 2 <= M <= 64 (weight-read bound:
# narrow row tiles, many column tiles, deep K). The first entry is the configuration used when
# autotuning is off. Shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K * bytes; A100 has
# 164 KiB, H100/H200 227 KiB (configurations that do not fit are skipped by the autotuner).
CONFIGS = {
    # int8 x int8 -> int32 (mma.sync m16n8k32 on sm_80, wgmma on sm_90): BLOCK_K 128 = one
    # 128-byte line per row; 128x256 / 256x128 with 8 warps for full tensor-core rate.
    ("int8", "large"): [
        _cfg(128, 128, 128, 8, 4), _cfg(128, 256, 128, 8, 3), _cfg(256, 128, 128, 8, 3),
        _cfg(128, 128, 64, 4, 4), _cfg(64, 128, 128, 4, 4), _cfg(128, 64, 128, 4, 4),
    ],
    ("int8", "small"): [
        _cfg(16, 64, 256, 4, 4), _cfg(16, 128, 128, 4, 4), _cfg(32, 64, 256, 4, 4),
        _cfg(32, 128, 128, 4, 4), _cfg(64, 64, 128, 4, 4), _cfg(64, 128, 128, 4, 3),
    ],
    # bf16/fp16 x (weight-only int8 dequantised in registers, or 16-bit 2:4 values).
    ("f16", "large"): [
        _cfg(128, 128, 64, 8, 3), _cfg(128, 256, 64, 8, 3), _cfg(256, 128, 64, 8, 3),
        _cfg(64, 128, 64, 4, 4), _cfg(128, 64, 64, 4, 4),
    ],
    ("f16", "small"): [
        _cfg(16, 64, 128, 4, 4), _cfg(16, 128, 64, 4, 4), _cfg(32, 64, 128, 4, 4),
        _cfg(32, 128, 64, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 3),
    ],
    # float32 x: exact float32 products on the CUDA cores (no TF32): correctness, not speed.
    ("f32", "large"): [_cfg(64, 64, 32, 8, 3), _cfg(32, 64, 32, 4, 3)],
    ("f32", "small"): [_cfg(16, 64, 32, 4, 3), _cfg(32, 64, 32, 4, 3)],
}  # fmt: skip
# M == 1: enough programs to cover every SM several times, 16-byte loads per lane.
GEMV_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bn, bk, w, s in (
        (16, 512, 4, 3),
        (8, 1024, 4, 3),
        (32, 256, 4, 3),
        (16, 1024, 8, 3),
        (32, 512, 8, 3),
        (64, 256, 8, 2),
    )  # fmt: skip
]
_KEY = ["M_KEY", "N", "K", "SPARSE", "HAS_WS", "WS_GROUP"]
_GEMM = {
    kind: triton.autotune(configs, key=_KEY)(_gemm_kernel) for kind, configs in CONFIGS.items()
}
_gemv = triton.autotune(GEMV_CONFIGS, key=["N", "K", "SPARSE", "HAS_WS", "WS_GROUP"])(_gemv_kernel)


def dot_kind(dtype: torch.dtype) -> str:
    return {torch.int8: "int8", torch.float32: "f32"}.get(dtype, "f16")


# Interpreter configuration: small tiles, several K steps, GROUP_M > 1 so tile order is tested.
_INTERPRET_GEMM = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}
_INTERPRET_GEMV = {"BLOCK_N": 8, "BLOCK_K": 32}


def matmul(
    x: torch.Tensor,
    w: torch.Tensor,
    meta: torch.Tensor | None,
    x_scale: torch.Tensor | None,
    w_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``epilogue(x @ W.T)``: W is ``w`` [N, K] when ``meta`` is None, else the 2:4 weight
    (values ``w`` [N, K/2], ``meta``). Scales and bias optional (see the module doc)."""
    x, w = rowmajor(x), rowmajor(w)
    m, k = x.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    sparse = meta is not None
    meta = rowmajor(meta) if sparse else w  # unused placeholders must still be tensors
    xs = x_scale.contiguous() if x_scale is not None else out
    ws = w_scale.contiguous() if w_scale is not None else out
    b = bias.contiguous() if bias is not None else out
    flags = {
        "SPARSE": sparse,
        "INT8_DOT": x.dtype == torch.int8,
        "HAS_XS": x_scale is not None,
        "HAS_WS": w_scale is not None,
        "WS_GROUP": group_size,
        "HAS_BIAS": bias is not None,
    }
    stride_sn = ws.stride(0)
    if m == 1:
        args = (x, w, meta, xs, ws, b, out, n, k, w.stride(0), meta.stride(0), stride_sn)
        _launch(_gemv, _INTERPRET_GEMV, lambda c: (triton.cdiv(n, c["BLOCK_N"]),), args, flags)
        return out
    args = (
        x,
        w,
        meta,
        xs,
        ws,
        b,
        out,
        m,
        n,
        k,
        x.stride(0),
        w.stride(0),
        meta.stride(0),
        stride_sn,
        out.stride(0),
        min(next_pow2(m), 8192),
    )

    def grid(c):
        return (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]),)

    tuner = _GEMM[dot_kind(x.dtype), "small" if m <= 64 else "large"]
    _launch(tuner, _INTERPRET_GEMM, grid, args, flags)
    return out


def _launch(tuner, interpret_meta, grid, args, flags):
    """Run ``tuner``'s kernel: autotuned, or with its first configuration, or (interpreter) with
    the fixed small one."""
    if AUTOTUNE and not INTERPRET:
        tuner[grid](*args, **flags)
        return
    if INTERPRET:
        meta, options = interpret_meta, {}
    else:
        first = tuner.configs[0]
        meta, options = first.kwargs, {"num_warps": first.num_warps, "num_stages": first.num_stages}
    tuner.fn[grid(meta)](*args, **flags, **meta, **options)
