"""The C++ CPU 2:4 kernels against the reference, on every ISA path (fixture cpu_isa)."""

import pytest
import torch

import llmkern
from llmkern.cpu import int8 as cpu_int8
from llmkern.nn import Sparse24Linear
from llmkern.ops import sparse24 as s24
from tests.ops.test_sparse24_format import random_24

CPU = {"backend": "cpu"}
REF = {"backend": "reference"}
# (M, N, K): M from 1 up past the 4-row register tile and the 64-row x block; N not a multiple
# of the 4-row weight tile; K with partial 32- and 128-column chunks (K % 8 == 4 included) and
# without (64: whole 16-byte value loads only). Float x from 12 rows (AVX2) or 16 (AVX-512) runs
# the column kernel: M either side of that, partial vectors and 64- and 128-row tiles, tiles of
# few vectors, more than one 64-row weight block, partial 64-column chunks, K past one
# 1024-column pass (2180).
SHAPES = [(1, 1, 4), (1, 7, 36), (2, 13, 100), (3, 9, 132), (4, 33, 260), (5, 6, 516),
          (9, 17, 1028), (1, 130, 2052), (70, 5, 68), (3, 24, 64), (11, 3, 64), (12, 70, 260),
          (130, 9, 388), (64, 130, 128), (20, 9, 2180), (16, 11, 132)]  # fmt: skip
# fp32 outputs differ from the reference by summation order only; bf16/fp16 outputs may differ
# by one rounding of the fp32 result.
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 1e-2), torch.float16: (2e-3, 2e-3)}

pytestmark = pytest.mark.usefixtures("needs_ext")


def close(got, want, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("dtype", list(TOL))
def test_float_matmul_matches_reference(cpu_isa, m, n, k, dtype):
    w = random_24(n, k, dtype, density=0.8)
    values, meta = llmkern.compress_24(w)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n) if n % 2 else None  # fp32 bias with a low-precision x is allowed
    got = llmkern.sparse24_matmul(x, values, meta, bias, **CPU)
    assert got.dtype == dtype and got.shape == (m, n)
    close(got, llmkern.sparse24_matmul(x, values, meta, bias, **REF), dtype)


@pytest.mark.parametrize("subnormal_in", ["x", "w"])
def test_bf16_subnormals_are_multiplied_not_flushed(cpu_isa, subnormal_in):
    # From 5 rows (9 on AMX) AVX-512 machines hand bf16 products to torch's dense GEMM, which
    # reads subnormal inputs as zero; calls holding one must keep the exact 2:4 kernel.
    tiny = torch.finfo(torch.bfloat16).tiny
    w = random_24(16, 64, torch.bfloat16)
    x = torch.randn(16, 64).bfloat16()
    if subnormal_in == "x":
        x, w = (x * tiny / 8).bfloat16(), (w * 2**20).bfloat16()
    else:
        x, w = (x * 2**20).bfloat16(), (w * tiny / 8).bfloat16()
    assert ((x.abs() < tiny) & (x != 0)).any() or ((w.abs() < tiny) & (w != 0)).any()
    values, meta = llmkern.compress_24(w)
    module = Sparse24Linear.from_weight(w)
    want = (x.double() @ w.double().T).float()
    for got in (llmkern.sparse24_matmul(x, values, meta, None, **CPU), module(x)):
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=0)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_w8a8_is_bit_exact(cpu_isa, m, n, k):
    w_q = random_24(n, k, torch.int8)
    values, meta = llmkern.compress_24(w_q)
    x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    x_scale, w_scale = torch.rand(m) + 0.01, torch.rand(n) + 0.01
    for out_dtype, bias in ((torch.float32, torch.randn(n)), (torch.bfloat16, None)):
        args = (x_q, values, meta, x_scale, w_scale, bias, out_dtype)
        got = llmkern.sparse24_w8a8_matmul(*args, **CPU)
        assert got.dtype == out_dtype
        assert torch.equal(got, llmkern.sparse24_w8a8_matmul(*args, **REF))


@pytest.mark.parametrize("m", [3, 40])  # the row and (AVX2) column kernels
def test_w8a8_extreme_values_exact(cpu_isa, m):
    # |x| = 127 and w = -128 everywhere kept: the largest int32 sums (and the unsigned-x trick);
    # rows of x = -128: every product 2^14, so the column kernel's fp32 block sums reach 2^24.
    n, k = 5, 4100
    w_q = llmkern.prune_24(torch.full((n, k), -128, dtype=torch.int8), torch.rand(n, k))
    values, meta = llmkern.compress_24(w_q)
    x_q = torch.where(torch.rand(m, k) < 0.5, -127, 127).to(torch.int8)
    x_q[1::2] = -128
    args = (x_q, values, meta, torch.ones(m), torch.ones(n), None, torch.float32)
    assert torch.equal(
        llmkern.sparse24_w8a8_matmul(*args, **CPU), llmkern.sparse24_w8a8_matmul(*args, **REF)
    )


@pytest.mark.parametrize("m,n,k", SHAPES[::2])
@pytest.mark.parametrize("dtype", list(TOL))
def test_w8_weight_only_matches_reference(cpu_isa, m, n, k, dtype):
    values, meta = llmkern.compress_24(random_24(n, k, torch.int8))
    x = torch.randn(m, k).to(dtype)
    w_scale = torch.rand(n) * 0.02
    bias = torch.randn(n)
    got = llmkern.sparse24_w8_matmul(x, values, meta, w_scale, bias, **CPU)
    assert got.dtype == dtype
    # Few rows may be rounded to int16 first, on the dense path and by the 2:4 int16 kernel
    # alike (docs/numerics.md).
    if cpu_int8.w8_rounds_x(x, 0, sparse24=True):
        x = cpu_int8.round_x_int16(x).to(dtype)
    close(got, llmkern.sparse24_w8_matmul(x, values, meta, w_scale, bias, **REF), dtype)


# The int16 row kernels (AVX2, AVX-512 VNNI + VBMI; up to w8_int16_rows(sparse24=True) rows): K with a partial last step (K % 8 == 4),
# partial 4-step groups (K % 32), more than one 128-column x block, N off the 4-row tile.
INT16_SHAPES = [(1, 1, 4), (1, 5, 36), (2, 7, 100), (3, 9, 132), (4, 33, 260), (1, 130, 2052),
                (2, 6, 4100), (1, 64, 2048), (4, 3, 32)]  # fmt: skip


def _kernel_w8(x, values, meta, w_scale, bias=None):
    """The 2:4 kernels themselves (the op would take the dense path at these rows on AVX2)."""
    return torch.ops.llmkern_C.sparse24_matmul(x, values, meta, w_scale, bias)


@pytest.mark.parametrize("m,n,k", INT16_SHAPES)
@pytest.mark.parametrize("dtype", list(TOL))
def test_w8_int16_row_kernel_matches_reference(cpu_isa, m, n, k, dtype):
    values, meta = llmkern.compress_24(random_24(n, k, torch.int8))
    x = (torch.randn(m, k) * torch.logspace(-2, 2, k)).to(dtype)  # blocks of different scales
    w_scale, bias = torch.rand(n) * 0.02, torch.randn(n)
    got = _kernel_w8(x, values, meta, w_scale, bias)
    assert got.dtype == dtype and got.shape == (m, n)
    xr = cpu_int8.round_x_int16(x).to(dtype) if cpu_int8.w8_rounds_x(x, 0, sparse24=True) else x
    close(got, llmkern.sparse24_w8_matmul(xr, values, meta, w_scale, bias, **REF), dtype)


def test_w8_int16_row_kernel_rounds_exactly_where_predicted(cpu_isa):
    """Up to w8_int16_rows(sparse24=True) rows the AVX2 and AVX-512 VNNI 2:4 kernels compute
    on round_x_int16(x) (as the dense kernels do), one row more they do not. Each block holds
    one large value whose weights are pruned, so rounding moves the output by ~1e-3 relative,
    far beyond the fp32 tolerance."""
    n, k = 24, 300
    w_q = random_24(n, k, torch.int8)
    w_q[:, :: cpu_int8.W8_X_BLOCK] = 0
    values, meta = llmkern.compress_24(w_q)
    w_scale = torch.rand(n) * 0.02
    limit = cpu_int8.w8_int16_rows(sparse24=True)
    vnni_rows = cpu_int8.W8_INT16_ROWS.get("avx512_vnni" if cpu_isa == "amx" else cpu_isa)
    assert limit in (0, vnni_rows)  # no AMX 2:4 kernel: AMX machines round as AVX-512 VNNI
    for m in sorted({1, max(limit, 1), limit + 1}):
        x = torch.randn(m, k)
        x[:, :: cpu_int8.W8_X_BLOCK] = 500.0
        rounds = m <= limit
        assert cpu_int8.w8_rounds_x(x, 0, sparse24=True) == rounds
        got = _kernel_w8(x, values, meta, w_scale)
        exact = llmkern.sparse24_w8_matmul(x, values, meta, w_scale, **REF)
        rounded = llmkern.sparse24_w8_matmul(
            cpu_int8.round_x_int16(x), values, meta, w_scale, **REF
        )
        close(got, rounded if rounds else exact, torch.float32)
        with pytest.raises(AssertionError):
            close(got, exact if rounds else rounded, torch.float32)


def test_w8_int16_row_kernel_extreme_values(cpu_isa):
    """Every kept weight -128 and |x| rounding to 32767: the largest int32 block sums."""
    n, k = 6, 4100
    w_q = llmkern.prune_24(torch.full((n, k), -128, dtype=torch.int8), torch.rand(n, k))
    values, meta = llmkern.compress_24(w_q)
    x = torch.where(torch.rand(1, k) < 0.5, -1.0, 1.0) * (1 - 2.0**-17)
    x[0, 4] = 0.0
    got = _kernel_w8(x, values, meta, torch.ones(n))
    xr = cpu_int8.round_x_int16(x) if cpu_int8.w8_rounds_x(x, 0, sparse24=True) else x
    if cpu_int8.w8_rounds_x(x, 0, sparse24=True):
        assert (cpu_int8.round_x_int16(x).abs().amax() * 2.0**15).item() == 32767
    torch.testing.assert_close(
        got, llmkern.sparse24_w8_matmul(xr, values, meta, torch.ones(n), **REF), rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("case", ["nan", "inf"])
def test_w8_int16_row_kernel_leaves_non_finite_x_to_float(cpu_isa, case):
    """x the int16 rounding cannot carry runs the float kernel, which multiplies kept weights
    only: the NaN/inf reaches exactly the outputs whose row keeps that column."""
    values, meta = llmkern.compress_24(random_24(6, 64, torch.int8))
    kept = s24.decompress_24_ref(torch.ones_like(values), meta, 64).bool()
    x = torch.randn(1, 64)
    x[0, 21] = float(case)
    got = _kernel_w8(x, values, meta, torch.rand(6) + 0.1)
    assert torch.equal(~torch.isfinite(got[0]), kept[:, 21])


def test_non_contiguous_inputs(cpu_isa):
    m, n, k = 3, 10, 72
    values, meta = llmkern.compress_24(random_24(2 * n, k))
    values, meta = values[::2], meta[::2]  # strided rows
    x = torch.randn(k, m).T  # column-major
    bias = torch.randn(2 * n)[::2]
    want = llmkern.sparse24_matmul(x.contiguous(), values.contiguous(), meta.contiguous(),
                                   bias.contiguous(), **REF)  # fmt: skip
    close(llmkern.sparse24_matmul(x, values, meta, bias, **CPU), want, torch.float32)
    xq = torch.randint(-127, 128, (k, m), dtype=torch.int8).T
    vq, mq = llmkern.compress_24(random_24(n, k, torch.int8))
    args = (xq, vq, mq, torch.rand(m), torch.rand(n), None, torch.float32)
    assert torch.equal(
        llmkern.sparse24_w8a8_matmul(*args, **CPU), llmkern.sparse24_w8a8_matmul(*args, **REF)
    )


@pytest.mark.parametrize("m", [3, 40])  # the row and column kernels
def test_nan_propagates_through_kept_positions_only(cpu_isa, m):
    # The contract (llmkern/ops/sparse24.py): pruned weights are never multiplied, so a NaN/inf
    # in x reaches exactly the outputs whose row keeps that column.
    values, meta = llmkern.compress_24(random_24(6, 64))
    kept = s24.decompress_24_ref(torch.ones_like(values), meta, 64).bool()
    x = torch.randn(m, 64)
    x[0, 5] = float("nan")
    x[1, 40] = float("inf")
    got = llmkern.sparse24_matmul(x, values, meta, **CPU)
    assert torch.equal(~torch.isfinite(got[0]), kept[:, 5])
    assert torch.equal(~torch.isfinite(got[1]), kept[:, 40])
    assert bool(torch.isfinite(got[2:]).all())


def test_bad_input_is_rejected_before_the_kernel():
    values, meta = llmkern.compress_24(random_24(4, 16))
    x = torch.randn(2, 16)
    with pytest.raises(ValueError, match="K = 2 \\* values.shape\\[1\\]"):
        llmkern.sparse24_matmul(torch.randn(2, 12), values, meta, **CPU)
    with pytest.raises(TypeError, match="meta must have dtype uint8"):
        llmkern.sparse24_matmul(x, values, meta.to(torch.int16), **CPU)
    with pytest.raises(ValueError, match="meta must have shape"):
        llmkern.sparse24_matmul(x, values, meta[:2], **CPU)
    with pytest.raises(TypeError, match="values must have dtype"):
        llmkern.sparse24_matmul(x.bfloat16(), values, meta, **CPU)
    with pytest.raises(ValueError, match="multiple of 4"):
        llmkern.sparse24_matmul(
            torch.randn(2, 6), torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.uint8)
        )
    with pytest.raises(ValueError, match="one device"):
        llmkern.sparse24_matmul(x, values, meta.to("meta"), **CPU)
    with pytest.raises(ValueError, match="bias must have shape"):
        llmkern.sparse24_matmul(x, values, meta, torch.randn(3), **CPU)
    vq, mq = llmkern.compress_24(random_24(4, 16, torch.int8))
    with pytest.raises(ValueError, match="w_scale must have shape"):
        llmkern.sparse24_w8_matmul(x, vq, mq, torch.rand(5), **CPU)
    with pytest.raises(TypeError, match="x_q must have dtype int8"):
        llmkern.sparse24_w8a8_matmul(x, vq, mq, torch.rand(2), torch.rand(4), **CPU)


def test_gradients_of_the_op_match_masked_dense_autograd():
    m, n, k = 5, 6, 36
    w = random_24(n, k, density=0.8)
    values, meta = llmkern.compress_24(w)
    values.requires_grad_(True)
    x = torch.randn(m, k, requires_grad=True)
    bias = torch.randn(n, requires_grad=True)
    g = torch.randn(m, n)
    llmkern.sparse24_matmul(x, values, meta, bias).backward(g)

    mask = s24.decompress_24_ref(torch.ones_like(values), meta, k)
    wd = w.clone().requires_grad_(True)
    x2, b2 = x.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, wd * mask, b2).backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(bias.grad, b2.grad)
    # The compressed gradient, put back at the kept positions, is the masked dense gradient.
    torch.testing.assert_close(s24.decompress_24_ref(values.grad, meta, k), wd.grad)
