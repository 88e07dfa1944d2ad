"""The numerical envelope of docs/numerics.md: the error bounds each op promises per dtype, the
int8 overflow limit on K, and KD-loss stability for extreme logits and temperatures. Every bound
is checked for every backend that runs on CPU tensors here (the reference included)."""

import math

import numpy as np
import pytest
import torch

import llmkern
from llmkern import backends
from llmkern.ops import MAX_K_W8A8

FLT_MAX = torch.finfo(torch.float32).max


def cpu_backends(op):
    """Backends with a kernel for ``op`` that can run CPU tensors now (the triton interpreter
    only on the small cases that opt in)."""
    names = []
    for name, kernel in sorted(backends.kernels(op).items()):
        if "cpu" in kernel.devices and backends.backend_available(name, "cpu")[0]:
            names.append(name)
    return names


# --- int8: overflow bound on K ------------------------------------------------------------------


def test_max_k_is_the_largest_k_without_int32_overflow():
    assert MAX_K_W8A8 * 128 * 128 <= 2**31 - 1 < (MAX_K_W8A8 + 1) * 128 * 128


@pytest.mark.parametrize("backend", cpu_backends("w8a8_matmul"))
def test_w8a8_exact_at_max_k_with_extreme_operands(backend):
    """-128 x -128 over K = MAX_K_W8A8: the largest accumulator an int8 GEMM can produce."""
    k = MAX_K_W8A8
    xq = torch.full((2, k), -128, dtype=torch.int8)
    xq[1] = 127
    wq = torch.full((3, k), -128, dtype=torch.int8)
    out = llmkern.w8a8_matmul(xq, wq, torch.ones(2), torch.ones(3), backend=backend)
    want = torch.tensor([128 * 128 * k, -127 * 128 * k], dtype=torch.float64)[:, None].expand(2, 3)
    assert torch.equal(out.double(), want.float().double())  # the exact int, rounded once


# --- int8: quantisation of tiny rows ------------------------------------------------------------


@pytest.mark.parametrize("backend", cpu_backends("quantize_per_token"))
def test_quantize_per_token_tiny_rows_are_zero_rows(backend):
    """127 / absmax overflows float32 below 127 / FLT_MAX: such rows quantise like zero rows
    (scale 1, q 0) instead of turning 0 * inf into garbage codes."""
    limit = 127.0 / FLT_MAX
    x = torch.tensor(
        [[1e-40, 0.0, -1e-40, 5e-41], [limit * 0.5, 0.0, -limit * 0.25, 0.0],
         [3e-36, 0.0, 1e-36, -2e-36], [0.0, 0.0, 0.0, 0.0]]
    )  # fmt: skip
    q, s = llmkern.quantize_per_token(x, backend=backend)
    assert torch.equal(q[[0, 1, 3]], torch.zeros(3, 4, dtype=torch.int8))
    assert torch.equal(s[[0, 1, 3]], torch.ones(3))
    assert q[2].tolist() == [127, 0, 42, -85] and s[2] == torch.tensor(3e-36) / 127


def test_quantize_weight_tiny_groups_have_a_usable_scale():
    w = torch.tensor([[1e-44, 0.0, 0.0, 0.0], [1e-30, -2e-30, 0.0, 5e-31]])
    for group_size in (0, 2):
        q, s = llmkern.quantize_weight(w, group_size)
        assert (s > 0).all() and torch.isfinite(s).all()
        deq = llmkern.ops.int8.dequantize_weight(q, s, group_size)
        assert torch.equal(q[0], torch.zeros(4, dtype=torch.int8))
        assert ((deq - w).abs() <= 1e-32).all()


# --- 2:4: magnitude pruning of int8 weights -----------------------------------------------------


def test_prune_24_int8_keeps_minus_128():
    """|-128| does not fit int8: the default magnitude score must not wrap to -128."""
    w = torch.tensor([[-128, 5, 3, -128, 1, 127, -127, 0]], dtype=torch.int8)
    assert llmkern.prune_24(w).tolist() == [[-128, 0, 0, -128, 0, 127, -127, 0]]


@pytest.mark.parametrize("backend", cpu_backends("quantize_per_token"))
def test_quantize_per_token_divides_exactly(backend):
    """inv = 127 / absmax is one correctly rounded float32 division (found by the property test:
    torch's ``127.0 / t`` rounds twice and gave 64 here where x * inv = 63.499996)."""
    x = torch.tensor([[-35840.0, 40192.0, -2288.0, 41216.0, 82432.0]], dtype=torch.bfloat16)
    q, s = llmkern.quantize_per_token(x, backend=backend)
    assert q.tolist() == [[-55, 62, -4, 63, 127]]
    a = torch.rand(10000) * 1000 + 1e-3
    inv = torch.from_numpy(np.float32(127.0) / a.numpy())
    q, s = llmkern.quantize_per_token(a[:, None] * torch.tensor([[1.0, 0.5]]), backend=backend)
    want = torch.round(a * 0.5 * inv).clamp(-127, 127).to(torch.int8)
    assert torch.equal(q[:, 1], want)


@pytest.mark.parametrize("backend", cpu_backends("kd_loss_rows"))
@pytest.mark.parametrize("beta", [0.0, 1e-3, 0.5, 1.0])
def test_kd_jsd_with_underflowing_probabilities_is_finite(backend, beta):
    """M = beta p + (1 - beta) q taken in log space: with p or q underflowing to 0 the loss and
    gradient stay finite (found by the property test: beta = 0 gave NaN)."""
    z = torch.tensor([[0.0, 2000.0, -3000.0], [5.0, -5.0, 0.0]], requires_grad=True)
    t = torch.tensor([[1000.0, -1000.0, 0.0], [-2000.0, 3000.0, 1.0]])
    loss = llmkern.kd_loss(z, t, divergence="jsd", beta=beta, reduction="none", backend=backend)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(z.grad).all()
    if beta in (0.0, 1.0):  # JSD with one side weightless is KL(q || q) = KL(p || p) = 0
        assert torch.equal(loss, torch.zeros(2))
    else:  # disjoint supports: the divergence saturates at the entropy of the mixture weights
        h = -(beta * math.log(beta) + (1 - beta) * math.log1p(-beta))
        torch.testing.assert_close(loss[0], torch.tensor(h, dtype=torch.float32), rtol=1e-5, atol=0)
