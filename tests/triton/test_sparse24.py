"""Triton 2:4 sparse matmuls vs the reference: under TRITON_INTERPRET=1 on CPU tensors (small
shapes), and on CUDA tensors at realistic shapes (``gpu``)."""

import pytest
import torch

import llmkern.ops as ops

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on masked lanes

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
RTOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}
# M=1 is the GEMV kernel. K % 8 == 4 (36, 52, 100) leaves an unused meta nibble.
SHAPES = [(1, 5, 36), (1, 12, 64), (3, 17, 52), (20, 9, 100), (40, 33, 64)]


def assert_close(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    rtol = RTOL[ref.dtype]
    scale = ref.float().abs().max().item()
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=rtol * scale)


def sparse_weight(n, k, dtype, device="cpu"):
    """A 2:4 weight with every kind of group: two kept, one kept, none kept, and every code."""
    if dtype == torch.int8:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=device)
    else:
        w = torch.randn(n, k, device=device).to(dtype)
    w = ops.prune_24(w, torch.rand(n, k, device=device))
    w[0, :4] = 0
    if n > 1:
        w[1, 4:8] = torch.tensor([0, 0, 0, 3], dtype=dtype, device=device)
    return w


def exact_int_matmul(x_q, w_q):
    return (x_q.double() @ w_q.double().T).to(torch.int32)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_sparse24_matmul(m, n, k, dtype):
    values, meta = ops.compress_24(sparse_weight(n, k, dtype))
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype) if m % 2 else None
    args = (x, values, meta, bias)
    assert_close(
        ops.sparse24_matmul(*args, backend="triton"),
        ops.sparse24_matmul(*args, backend="reference"),
    )


def test_sparse24_matmul_non_contiguous_x():
    values, meta = ops.compress_24(sparse_weight(6, 40, torch.float32))
    x = torch.randn(40, 5).T  # [5, 40], column stride 5
    args = (x, values, meta, None)
    assert_close(
        ops.sparse24_matmul(*args, backend="triton"),
        ops.sparse24_matmul(*args, backend="reference"),
    )


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_sparse24_w8a8_int32_exact(m, n, k):
    w_q = sparse_weight(n, k, torch.int8)
    values, meta = ops.compress_24(w_q)
    x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    ones_m, ones_n = torch.ones(m), torch.ones(n)
    out = ops.sparse24_w8a8_matmul(x_q, values, meta, ones_m, ones_n, backend="triton")
    assert torch.equal(out, exact_int_matmul(x_q, w_q).float())


@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("m", [1, 18])
def test_sparse24_w8a8_epilogue(m, out_dtype):
    n, k = 11, 72
    values, meta = ops.compress_24(sparse_weight(n, k, torch.int8))
    x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    args = (x_q, values, meta, torch.rand(m) / 100, torch.rand(n) / 100, torch.randn(n), out_dtype)
    assert_close(
        ops.sparse24_w8a8_matmul(*args, backend="triton"),
        ops.sparse24_w8a8_matmul(*args, backend="reference"),
    )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m,n,k", [(1, 5, 36), (3, 17, 52), (20, 9, 100)])
def test_sparse24_w8(m, n, k, dtype):
    values, meta = ops.compress_24(sparse_weight(n, k, torch.int8))
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n) if m > 1 else None
    args = (x, values, meta, torch.rand(n) / 50, bias)
    assert_close(
        ops.sparse24_w8_matmul(*args, backend="triton"),
        ops.sparse24_w8_matmul(*args, backend="reference"),
    )


# ---------------------------------------------------------------------------------------------
# GPU (run by bench/gpu_check.py)
# ---------------------------------------------------------------------------------------------

GPU_MS = [1, 16, 64, 200, 1024]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", GPU_MS)
def test_gpu_sparse24_matmul(m, dtype):
    n, k = 2048 + 16, 4096 + 32
    values, meta = ops.compress_24(sparse_weight(n, k, dtype, "cuda"))
    x = torch.randn(m, k, device="cuda").to(dtype)
    args = (x, values, meta, torch.randn(n, device="cuda").to(dtype))
    assert_close(
        ops.sparse24_matmul(*args, backend="triton"),
        ops.sparse24_matmul(*args, backend="reference"),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("m", GPU_MS)
def test_gpu_sparse24_int8(m):
    n, k = 1536, 4096
    w_q = sparse_weight(n, k, torch.int8, "cuda")
    values, meta = ops.compress_24(w_q)
    x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
    ones_m, ones_n = torch.ones(m, device="cuda"), torch.ones(n, device="cuda")
    acc = ops.sparse24_w8a8_matmul(x_q, values, meta, ones_m, ones_n, backend="triton")
    assert torch.equal(acc, exact_int_matmul(x_q, w_q).float())
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    args = (x, values, meta, torch.rand(n, device="cuda") / 50, None)
    assert_close(
        ops.sparse24_w8_matmul(*args, backend="triton"),
        ops.sparse24_w8_matmul(*args, backend="reference"),
    )
