"""CUDA C++ INT8 kernels (backend="cuda") against the reference, on a CUDA device.

quantize_per_token must match exactly (int8 values and, on CUDA tensors, the scales); W8A8 must
match the reference bit for bit (int32 accumulation is exact and the epilogue performs the same
rounded float32 steps); W8 weight-only within float32-accumulation tolerances of the output dtype.
Shapes cover M = 1, K and N that are not multiples of the tile sizes, strided and misaligned
rows (the byte-load paths), bias, per-channel and per-group scales.
"""

from __future__ import annotations

import pytest
import torch

from llmkern.backends import kernels
from llmkern.ops import int8 as ops

pytestmark = pytest.mark.gpu

DEV = "cuda"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# |out - ref| <= TOL * max|ref| for the weight-only GEMM, per output dtype.
W8_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def test_cuda_kernels_registered():
    for op in ("quantize_per_token", "w8a8_matmul", "w8_matmul", "w8a8_linear", "w8_linear"):
        assert "cuda" in kernels(op), f"no cuda kernel registered for {op}"


def _rows(m, k, dtype, *, layout="contiguous"):
    """x [m, k] with contiguous rows, rows inside a wider buffer, or a misaligned start."""
    if layout == "contiguous":
        return (torch.randn(m, k, device=DEV) * 3).to(dtype)
    if layout == "strided":
        return (torch.randn(m, k + 24, device=DEV) * 3).to(dtype)[:, 5 : 5 + k]
    return (torch.randn(m * k + 1, device=DEV) * 3).to(dtype)[1:].view(m, k)  # misaligned


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,k", [(1, 1), (1, 7), (3, 64), (5, 100), (17, 4096), (64, 1000)])
def test_quantize_per_token_exact(m, k, dtype):
    x = _rows(m, k, dtype)
    if m >= 3:
        x[1] = 0  # all-zero row: scale 1, q 0
        x[2, k // 2] = float("nan")  # non-finite row: scale NaN, q 0
    q, s = ops.quantize_per_token(x, backend="cuda")
    q_ref, s_ref = ops.quantize_per_token(x, backend="reference")
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.equal(q, q_ref)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", ["strided", "misaligned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_per_token_strided_rows(layout, dtype):
    x = _rows(9, 130, dtype, layout=layout)
    x[4, 3] = float("inf")
    q, s = ops.quantize_per_token(x, backend="cuda")
    q_ref, s_ref = ops.quantize_per_token(x, backend="reference")
    assert torch.equal(q, q_ref)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)


def _w8a8_case(m, n, k, bias_dtype):
    x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=DEV)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=DEV)
    x_scale = torch.rand(m, device=DEV) * 0.05 + 1e-3
    w_scale = torch.rand(n, device=DEV) * 0.05 + 1e-3
    bias = None if bias_dtype is None else torch.randn(n, device=DEV).to(bias_dtype)
    return x_q, w_q, x_scale, w_scale, bias


def _w8a8_reference_cpu(x_q, w_q, x_scale, w_scale, bias, out_dtype):
    # Integer matmul has no CUDA kernel in torch: the reference runs on CPU (same rounding).
    cpu = [t.cpu() if t is not None else None for t in (x_q, w_q, x_scale, w_scale, bias)]
    return ops.w8a8_matmul(*cpu, out_dtype, backend="reference")


W8A8_SHAPES = [
    (1, 1, 1),
    (1, 64, 64),
    (1, 4096, 4096),
    (3, 17, 33),
    (32, 128, 64),
    (33, 130, 100),
    (128, 128, 128),
    (200, 300, 1000),
    (257, 129, 4112),
]


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", W8A8_SHAPES)
def test_w8a8_exact(m, n, k, out_dtype):
    args = _w8a8_case(m, n, k, torch.float32 if (m + n) % 2 else None)
    out = ops.w8a8_matmul(*args, out_dtype, backend="cuda")
    ref = _w8a8_reference_cpu(*args, out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_w8a8_bias_dtypes(bias_dtype):
    args = _w8a8_case(40, 72, 96, bias_dtype)
    out = ops.w8a8_matmul(*args, torch.bfloat16, backend="cuda")
    assert torch.equal(out.cpu(), _w8a8_reference_cpu(*args, torch.bfloat16))


def test_w8a8_int32_extremes():
    """Sums near the int32 limit at the largest K allowed stay exact."""
    m, n, k = 2, 8, ops.MAX_K_W8A8
    x_q = torch.full((m, k), 127, dtype=torch.int8, device=DEV)
    w_q = torch.full((n, k), -128, dtype=torch.int8, device=DEV)
    w_q[1::2] = 127
    ones_m, ones_n = torch.ones(m, device=DEV), torch.ones(n, device=DEV)
    out = ops.w8a8_matmul(x_q, w_q, ones_m, ones_n, None, torch.float32, backend="cuda")
    ref = _w8a8_reference_cpu(x_q, w_q, ones_m, ones_n, None, torch.float32)
    assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("layout", ["strided", "misaligned"])
def test_w8a8_strided_and_misaligned_rows(layout):
    m, n, k = 37, 70, 200
    big_x = torch.randint(-127, 128, (m, k + 48), dtype=torch.int8, device=DEV)
    big_w = torch.randint(-128, 128, (n * (k + 48) + 3,), dtype=torch.int8, device=DEV)
    if layout == "strided":  # row stride 248 (not a multiple of 16): byte-load path
        x_q = big_x[:, 16 : 16 + k]
        w_q = big_w[: n * (k + 48)].view(n, k + 48)[:, :k]
    else:  # base address off by 3 bytes
        x_q = big_x[:, 3 : 3 + k]
        w_q = big_w[3 : 3 + n * k].view(n, k)
    args = (x_q, w_q, torch.rand(m, device=DEV), torch.rand(n, device=DEV), None)
    out = ops.w8a8_matmul(*args, torch.float32, backend="cuda")
    assert torch.equal(out.cpu(), _w8a8_reference_cpu(*args, torch.float32))


def _assert_close_scaled(out, ref, dtype):
    assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
    diff = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item() + 1e-6
    assert diff <= W8_TOL[dtype] * scale, f"max |diff| {diff} vs max |ref| {scale}"


W8_CASES = [  # (m, n, k, group_size)
    (1, 1, 16, 0),
    (1, 7, 100, 0),
    (1, 4096, 4096, 0),
    (1, 300, 4100, 128),
    (1, 256, 1000, 100),
    (2, 256, 512, 32),
    (3, 129, 96, 0),
    (4, 64, 4096, 64),
    (5, 64, 128, 0),
    (16, 300, 1000, 128),
    (70, 129, 257, 0),
    (70, 129, 257, 100),
    (256, 512, 1024, 0),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k,group_size", W8_CASES)
def test_w8_matches_reference(m, n, k, group_size, dtype):
    x = torch.randn(m, k, device=DEV).to(dtype)
    w_q, w_scale = ops.quantize_weight(torch.randn(n, k, device=DEV) * 0.05, group_size)
    bias = torch.randn(n, device=DEV).to(dtype) if (m + n) % 2 else None
    out = ops.w8_matmul(x, w_q, w_scale, bias, group_size, backend="cuda")
    ref = ops.w8_matmul(x, w_q, w_scale, bias, group_size, backend="reference")
    _assert_close_scaled(out, ref, dtype)


@pytest.mark.parametrize("m", [1, 3, 9])
@pytest.mark.parametrize("layout", ["strided", "misaligned"])
def test_w8_strided_and_misaligned_rows(m, layout):
    n, k = 96, 160
    x = _rows(m, k, torch.bfloat16, layout=layout)
    big = torch.randint(-127, 128, (n * (k + 8) + 1,), dtype=torch.int8, device=DEV)
    w_q = (
        big[1 : 1 + n * k].view(n, k)
        if layout == "misaligned"
        else big[: n * (k + 8)].view(n, k + 8)[:, :k]
    )
    w_scale = torch.rand(n, device=DEV) * 0.01
    out = ops.w8_matmul(x, w_q, w_scale, None, 0, backend="cuda")
    ref = ops.w8_matmul(x, w_q, w_scale, None, 0, backend="reference")
    _assert_close_scaled(out, ref, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Static activation scale (Int8Linear with input_scale): bit-exact quantisation, then W8A8
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "strided", "misaligned"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantize_static_exact(dtype, layout):
    x = _rows(37, 1000, dtype, layout=layout)
    x[0, 3] = 500.0  # saturates
    x[1, 7] = float("nan")
    x_scale = torch.tensor(0.03, device=DEV)
    q, s = torch.ops.llmkern_C.int8_quantize_per_token(x, x_scale)
    q_ref, s_ref = ops.quantize_static_ref(x, x_scale)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.nan_to_num(-1.0), s_ref.nan_to_num(-1.0))
    for bad in (0.0, -1.0, float("inf")):  # unchecked on the GPU: NaN scales, NaN outputs
        _, s = torch.ops.llmkern_C.int8_quantize_per_token(x, torch.tensor(bad, device=DEV))
        assert s.isnan().all()


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("m", [1, 33, 512])
def test_w8a8_linear_matches_reference(m, static):
    n, k = 1000, 4096
    x = (torch.randn(m, k, device=DEV) * 2).to(torch.bfloat16)
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=DEV)
    w_scale = torch.rand(n, device=DEV) / 100
    bias = torch.randn(n, device=DEV)
    x_scale = torch.tensor(0.02, device=DEV) if static else None
    out = ops.w8a8_linear(x, w_q, w_scale, bias, x_scale, backend="cuda")
    cpu = [t.cpu() if t is not None else None for t in (x, w_q, w_scale, bias, x_scale)]
    ref = ops.w8a8_linear(*cpu, backend="reference")  # as _w8a8_reference_cpu
    assert torch.equal(out.cpu(), ref)  # exact quantisation and int32 sums, same epilogue steps
