"""Triton INT8 kernels vs the reference: under TRITON_INTERPRET=1 on CPU tensors (small shapes),
and on CUDA tensors at realistic shapes (``gpu``)."""

import pytest
import torch

import llmkern.ops as ops
from llmkern.ops import int8 as int8_ops
from llmkern.ops.int8 import quantize_per_token_ref

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on masked lanes

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
# Relative tolerance of one output rounding (plus summation order) per output dtype.
RTOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def assert_close(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    scale = ref.float().abs().max().item()
    rtol = RTOL[ref.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=rtol * scale)


def exact_int_matmul(x_q, w_q):
    """Exact int32 x_q @ w_q.T on any device (float64 holds every partial sum exactly)."""
    return (x_q.double() @ w_q.double().T).to(torch.int32)


def random_int8(*shape, device="cpu", low=-128):
    return torch.randint(low, 128, shape, dtype=torch.int8, device=device)


# ---------------------------------------------------------------------------------------------
# quantize_per_token: bit-exact
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1, 7), (4, 64), (3, 200)])  # 200 > one-pass block: two passes
def test_quantize_per_token_exact(shape, dtype):
    x = (torch.randn(shape) * 5).to(dtype)
    q, s = ops.quantize_per_token(x, backend="triton")
    q_ref, s_ref = ops.quantize_per_token(x, backend="reference")
    assert torch.equal(q, q_ref)
    assert torch.equal(s, s_ref)


@pytest.mark.parametrize("k", [10, 130])
def test_quantize_special_rows(k):
    x = torch.randn(6, k) * 3
    x[0] = 0.0  # zero row: scale 1, q 0
    x[1, 3] = float("nan")  # non-finite rows: scale NaN, q 0
    x[2, k - 1] = float("-inf")
    x[3] = torch.arange(k) * 0.25 - k / 8  # absmax 63.5 makes 127 / absmax = 2: exact ties
    x[3, 0] = 63.5
    x[4, :] = 1e-30  # tiny but positive
    q, s = ops.quantize_per_token(x, backend="triton")
    q_ref, s_ref = quantize_per_token_ref(x)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.nan_to_num(-1.0), s_ref.nan_to_num(-1.0))
    assert s[1].isnan() and s[2].isnan() and s[0] == 1 and not q[:3].any()
    assert (q[3, 2::2] % 2 == 0).all()  # x * 2 is a tie at even columns: rounded to even


def test_quantize_non_contiguous():
    x = torch.randn(40, 6).T  # [6, 40] with column stride 6
    q, s = ops.quantize_per_token(x, backend="triton")
    q_ref, s_ref = quantize_per_token_ref(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


# ---------------------------------------------------------------------------------------------
# w8a8_matmul: exact int32 accumulation, epilogue within float rounding
# ---------------------------------------------------------------------------------------------

SHAPES = [(1, 5, 40), (3, 17, 50), (33, 40, 100)]  # M=1 is the GEMV kernel; odd N and K


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_w8a8_int32_exact(m, n, k):
    x_q, w_q = random_int8(m, k, low=-127), random_int8(n, k)
    ones_m, ones_n = torch.ones(m), torch.ones(n)
    out = ops.w8a8_matmul(x_q, w_q, ones_m, ones_n, None, torch.float32, backend="triton")
    # |acc| < 2**24 here, so the float32 output is the int32 accumulator exactly.
    assert torch.equal(out, exact_int_matmul(x_q, w_q).float())


@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 9, 72), (19, 33, 72)])
def test_w8a8_epilogue(m, n, k, with_bias, out_dtype):
    x_q, w_q = random_int8(m, k, low=-127), random_int8(n, k)
    x_scale, w_scale = torch.rand(m) / 100 + 1e-3, torch.rand(n) / 100 + 1e-3
    bias = torch.randn(n).to(out_dtype) if with_bias else None
    args = (x_q, w_q, x_scale, w_scale, bias, out_dtype)
    assert_close(
        ops.w8a8_matmul(*args, backend="triton"), ops.w8a8_matmul(*args, backend="reference")
    )


def test_w8a8_non_contiguous_and_nan_scale():
    x_q = random_int8(24, 5, low=-127).T  # [5, 24], column stride 5
    w_q = random_int8(7, 48)[:, ::2]  # [7, 24], column stride 2
    x_scale = torch.rand(5)
    x_scale[2] = float("nan")  # a non-finite activation row propagates as NaN
    args = (x_q, w_q, x_scale, torch.rand(7), torch.randn(7), torch.float32)
    out = ops.w8a8_matmul(*args, backend="triton")
    ref = ops.w8a8_matmul(*args, backend="reference")
    assert out[2].isnan().all()
    assert_close(out[[0, 1, 3, 4]], ref[[0, 1, 3, 4]])


# ---------------------------------------------------------------------------------------------
# w8_matmul: weight-only int8, per-channel or per-group scales
# ---------------------------------------------------------------------------------------------


def w_scales(n, k, group_size, device="cpu"):
    shape = (n,) if group_size == 0 else (n, -(-k // group_size))
    return torch.rand(shape, device=device) / 50 + 1e-3


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_w8_per_channel(m, n, k, dtype):
    x = torch.randn(m, k).to(dtype)
    w_q = random_int8(n, k, low=-127)
    args = (x, w_q, w_scales(n, k, 0), torch.randn(n), 0)
    assert_close(ops.w8_matmul(*args, backend="triton"), ops.w8_matmul(*args, backend="reference"))


# 32 / 64: tiles of 32 columns lie in one group; 16, 24: groups cut tiles; 512 > K: one group.
@pytest.mark.parametrize("group_size", [16, 24, 32, 64, 512])
@pytest.mark.parametrize("m,dtype", [(1, torch.bfloat16), (21, torch.float16), (21, torch.float32)])
def test_w8_per_group(m, dtype, group_size):
    n, k = 13, 100
    x = torch.randn(m, k).to(dtype)
    w_q = random_int8(n, k, low=-127)
    bias = torch.randn(n).to(dtype) if m > 1 else None
    args = (x, w_q, w_scales(n, k, group_size), bias, group_size)
    assert_close(ops.w8_matmul(*args, backend="triton"), ops.w8_matmul(*args, backend="reference"))


# ---------------------------------------------------------------------------------------------
# GPU (run by bench/gpu_check.py): same checks at realistic shapes, autotuned configurations
# ---------------------------------------------------------------------------------------------

GPU_MS = [1, 16, 64, 200, 1024]  # GEMV, small-M tiles, large-M tiles; 200 is not a tile multiple


@pytest.mark.gpu
@pytest.mark.parametrize("m", GPU_MS)
def test_gpu_w8a8(m):
    n, k = 1536, 4096 + 64
    x_q, w_q = random_int8(m, k, device="cuda", low=-127), random_int8(n, k, device="cuda")
    x_scale, w_scale = torch.rand(m, device="cuda") / 100, torch.rand(n, device="cuda") / 100
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    ones_m, ones_n = torch.ones(m, device="cuda"), torch.ones(n, device="cuda")
    acc = ops.w8a8_matmul(x_q, w_q, ones_m, ones_n, None, torch.float32, backend="triton")
    exact = exact_int_matmul(x_q, w_q)
    assert torch.equal(acc, exact.float())
    out = ops.w8a8_matmul(x_q, w_q, x_scale, w_scale, bias, torch.bfloat16, backend="triton")
    ref = (exact.float() * x_scale[:, None] * w_scale[None, :] + bias.float()).bfloat16()
    assert_close(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("group_size", [0, 128, 32])
@pytest.mark.parametrize("m", GPU_MS)
def test_gpu_w8(m, group_size):
    n, k = 2048 + 16, 4096
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_q = random_int8(n, k, device="cuda", low=-127)
    args = (x, w_q, w_scales(n, k, group_size, "cuda"), None, group_size)
    assert_close(ops.w8_matmul(*args, backend="triton"), ops.w8_matmul(*args, backend="reference"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_quantize(dtype):
    x = (torch.randn(300, 5000, device="cuda") * 4).to(dtype)
    x[7] = 0
    x[8, 9] = float("nan")
    q, s = ops.quantize_per_token(x, backend="triton")
    q_ref, s_ref = quantize_per_token_ref(x)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.nan_to_num(-1.0), s_ref.nan_to_num(-1.0))
    x = torch.randn(3, 40000, device="cuda").to(dtype)  # longer than one block: two passes
    q, s = ops.quantize_per_token(x, backend="triton")
    q_ref, s_ref = quantize_per_token_ref(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


# ---------------------------------------------------------------------------------------------
# Static activation scale (Int8Linear with input_scale): quantise with the given scale, then
# W8A8; the linear ops w8a8_linear / w8_linear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("k", [7, 200])  # 200 > the interpreter's one-pass block: two passes
def test_quantize_static_exact(k, dtype):
    from llmkern.ops.int8 import quantize_static_ref
    from llmkern.triton.kernels.quantize import quantize_per_token

    x = (torch.randn(6, k) * 3).to(dtype)
    x[0, 0] = 40.0  # beyond 127 * scale: saturates at 127
    x[1, k // 2] = float("inf")  # non-finite row: q 0, scale NaN
    x[2] = 0.0
    x[3, :] = 0.125 * torch.arange(k) - 1.5  # x / 0.25 lands on ties: rounded half to even
    x_scale = torch.tensor(0.25)
    q, s = quantize_per_token(x, x_scale)
    q_ref, s_ref = quantize_static_ref(x, x_scale)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.nan_to_num(-1.0), s_ref.nan_to_num(-1.0))
    assert q[0, 0] == 127 and s[1].isnan() and not q[1].any() and (s[[0, 2, 3]] == 0.25).all()


def test_quantize_static_unchecked_scales():
    """What the GPU kernels do with scales the public functions reject on CPU tensors only: a
    reciprocal that overflows (0 * inf) quantises to 0; a scale that is not finite and > 0
    makes every scale NaN, so the GEMM output is NaN rather than silently wrong."""
    from llmkern.ops.int8 import quantize_static_ref
    from llmkern.triton.kernels.quantize import quantize_per_token

    x = torch.randn(3, 40)
    x[:, 0] = 0.0
    tiny = torch.tensor(1e-40)  # 1 / tiny overflows float32
    q, s = quantize_per_token(x, tiny)
    q_ref, s_ref = quantize_static_ref(x, tiny)
    assert torch.equal(q, q_ref) and not q[:, 0].any() and (q[:, 1:].abs() == 127).all()
    for bad in (0.0, -0.5, float("nan"), float("inf")):
        _, s = quantize_per_token(x, torch.tensor(bad))
        assert s.isnan().all(), bad


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("m", [1, 19])  # GEMV and tiled GEMM
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w8a8_linear(dtype, m, static):
    n, k = 33, 96
    x = (torch.randn(m, k) * 2).to(dtype)
    w_q, w_scale = random_int8(n, k, low=-127), torch.rand(n) / 100 + 1e-3
    x_scale = torch.tensor(0.03) if static else None
    args = (x, w_q, w_scale, torch.randn(n), x_scale)
    out = int8_ops.w8a8_linear(*args, backend="triton")
    assert_close(out, int8_ops.w8a8_linear(*args, backend="reference"))


@pytest.mark.parametrize("group_size", [0, 32])
def test_w8_linear(group_size):
    n, k = 13, 100
    x = torch.randn(5, k).to(torch.bfloat16)
    w_q = random_int8(n, k, low=-127)
    args = (x, w_q, w_scales(n, k, group_size), torch.randn(n), group_size)
    assert_close(
        int8_ops.w8_linear(*args, backend="triton"), int8_ops.w8_linear(*args, backend="reference")
    )


@pytest.mark.gpu
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("m", [1, 64, 1024])
def test_gpu_w8a8_linear(m, static):
    n, k = 1536, 4096
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_q, w_scale = random_int8(n, k, device="cuda", low=-127), torch.rand(n, device="cuda") / 100
    x_scale = torch.tensor(0.02, device="cuda") if static else None
    args = (x, w_q, w_scale, None, x_scale)
    assert_close(
        int8_ops.w8a8_linear(*args, backend="triton"),
        int8_ops.w8a8_linear(*args, backend="reference"),
    )
