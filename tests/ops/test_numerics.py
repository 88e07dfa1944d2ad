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


def cpu_backends(op, triton=False):
    """Backends with a kernel for ``op`` that can run CPU tensors now; Triton (under the slow
    interpreter) only where a test opts in; its envelope is checked on the GPU."""
    names = []
    for name, kernel in sorted(backends.kernels(op).items()):
        if name == "triton" and not triton:
            continue
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


@pytest.mark.parametrize("backend", cpu_backends(triton=True, op="quantize_per_token"))
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


@pytest.mark.parametrize("backend", cpu_backends(triton=True, op="quantize_per_token"))
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


@pytest.mark.parametrize("backend", cpu_backends(triton=True, op="kd_loss_rows"))
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


# --- documented error bounds (docs/numerics.md), every backend, every dtype --------------------

U32 = 2.0**-24
U_OUT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
DTYPES = list(U_OUT)


def _absdot(x, w, b=None):
    out = x.abs().double() @ w.abs().double().T
    return out + (b.abs().double()[None, :] if b is not None else 0)


@pytest.mark.parametrize("backend", cpu_backends("w8a8_matmul"))
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_w8a8_error_bound(backend, out_dtype):
    """|out - exact| <= (4 u32 + u_out) (|acc x_s w_s| + |b|): exact int32 sums, four float32
    roundings in the epilogue, one to the output dtype."""
    m, n, k = 7, 33, 1000
    xq = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    xs, ws, b = torch.rand(m) / 127 / 8, torch.rand(n) / 127 / 8, torch.randn(n)
    out = llmkern.w8a8_matmul(xq, wq, xs, ws, b, out_dtype, backend=backend)
    acc = xq.double() @ wq.double().T
    exact = acc * xs.double()[:, None] * ws.double()[None, :] + b.double()
    mag = (acc * xs.double()[:, None] * ws.double()[None, :]).abs() + b.double().abs()
    assert ((out.double() - exact).abs() <= (4 * U32 + U_OUT[out_dtype]) * mag + 1e-30).all()


@pytest.mark.parametrize("op", ["w8_matmul", "sparse24_matmul"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_float_gemm_error_bound(op, dtype):
    """w8_matmul and sparse24_matmul: |out - exact| <= ((K + 2) u32 + u_out) (|x| |W|^T + |b|)
    (float32 accumulation in any order, dequantisation, one rounding to x's dtype)."""
    m, n, k = 5, 17, 512
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n)
    for backend in cpu_backends(op):
        if op == "w8_matmul":
            wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
            ws = torch.rand(n) / 127
            w = wq.double() * ws.double()[:, None]
            out = llmkern.w8_matmul(x, wq, ws, b, backend=backend)
        else:
            w = llmkern.prune_24(torch.randn(n, k).to(dtype))
            out = llmkern.sparse24_matmul(x, *llmkern.compress_24(w), b, backend=backend)
            w = w.double()
        exact = x.double() @ w.T + b.double()
        bound = ((k + 2) * U32 + U_OUT[dtype]) * _absdot(x, w, b)
        assert ((out.double() - exact).abs() <= bound).all(), backend


@pytest.mark.parametrize("dtype", DTYPES)
def test_w8_int16_rounding_error_bound(dtype):
    """Weight-only at few rows on the AVX2 / AVX-512 VNNI kernels (x rounded to int16 per
    block): the float bound above on the rounded x plus 2^-14 of each block's absmax times |W|
    (docs/numerics.md). x spans 6 decades, so small values lose bits to their block's largest."""
    from llmkern.cpu import int8 as cpu_int8

    if "cpu" not in cpu_backends("w8_matmul"):
        pytest.skip("llmkern._C is not built")
    m, n, k = int(min(max(cpu_int8.w8_int16_rows(), 1), 64)), 17, 700
    x = (torch.randn(m, k) * torch.logspace(-3, 3, k)).to(dtype)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    ws = torch.rand(n) / 127
    w = wq.double() * ws.double()[:, None]
    out = llmkern.w8_matmul(x, wq, ws, backend="cpu")
    float_part = (k + 2) * U32 + U_OUT[dtype]
    bound = float_part * _absdot(x, w) + (1 + float_part) * cpu_int8.x_rounding_bound(x, w)
    assert ((out.double() - x.double() @ w.T).abs() <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_w8a8_linear_quantisation_error_bound(dtype):
    """End to end (quantise x per token, W per channel, int8 GEMM) vs the float product:
    |y_q - x W^T| <= s_x/2 |W|_1 + s_w/2 |x|_1 + K s_x s_w / 4 (+ rounding), per element."""
    m, n, k = 6, 20, 300
    x, w = torch.randn(m, k).to(dtype), torch.randn(n, k) / 10
    xq, xs = llmkern.quantize_per_token(x)
    wq, ws = llmkern.quantize_weight(w)
    y = llmkern.w8a8_matmul(xq, wq, xs, ws, out_dtype=torch.float32)
    exact = x.double() @ w.double().T
    xs_, ws_ = xs.double()[:, None], ws.double()[None, :]
    bound = (xs_ / 2 * w.double().abs().sum(1)[None, :] + ws_ / 2 * x.double().abs().sum(1)[:, None]
             + k * xs_ * ws_ / 4)  # fmt: skip
    assert ((y.double() - exact).abs() <= bound * (1 + 1e-5) + 1e-6).all()


# --- KD loss: stable for logits up to +-1e4 and tau in [0.05, 100] -----------------------------


def _kd64(z, t, y, tau, alpha, divergence, beta=0.5):
    """float64 textbook loss per row and its gradient (autograd)."""
    z = z.detach().double().requires_grad_()
    logq, logp = torch.log_softmax(z / tau, 1), torch.log_softmax(t.double() / tau, 1)
    p, q = logp.exp(), logq.exp()
    if divergence == "kl":
        div = (torch.xlogy(p, p) - p * logq).sum(1)
    elif divergence == "reverse_kl":
        div = (q * logq - q * logp).sum(1)
    else:
        logm = torch.logaddexp(math.log(beta) + logp, math.log1p(-beta) + logq)
        div = beta * (torch.xlogy(p, p) - p * logm).sum(1) + (1 - beta) * (q * logq - q * logm).sum(
            1
        )
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    rows = alpha * tau * tau * div + (1 - alpha) * ce
    rows.sum().backward()
    return rows.detach(), z.grad


def kd_envelope(tau, maxabs, v, want, want_grad):
    """Documented float32 bound on |row loss - exact| and |d row / d z - exact| (docs/numerics.md):
    log-probabilities carry an absolute error ~ u (|z| / tau + log V), amplified by tau^2 in the
    loss and tau in the gradient, and probabilities the same relative error (which scales the
    reverse-KL and JSD terms, whose size grows with |z| / tau)."""
    logv = math.log(v) + 1
    rel = 16 * U32 * (2 * maxabs / tau + logv)
    loss = 64 * U32 * (tau * tau * logv + (tau + 1) * maxabs + logv) + rel * want.abs()
    grad = 64 * U32 * (tau * logv + maxabs + logv) + rel * want_grad.abs()
    return loss, grad


@pytest.mark.parametrize("backend", cpu_backends("kd_loss_rows"))
@pytest.mark.parametrize("tau", [0.05, 1.0, 7.0, 100.0])
@pytest.mark.parametrize("scale", [1e-3, 30.0, 1e4])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_kd_stable_for_extreme_logits_and_temperatures(backend, tau, scale, divergence):
    n, v = 6, 301
    g = torch.Generator().manual_seed(int(tau * 100 + scale))
    z = (torch.rand(n, v, generator=g) * 2 - 1) * scale
    t = (torch.rand(n, v, generator=g) * 2 - 1) * scale
    z[0, 3], t[1, 5] = scale, -scale  # the extremes themselves
    y = torch.randint(0, v, (n,), generator=g)
    zz = z.clone().requires_grad_()
    rows = llmkern.kd_loss(zz, t, y, tau, 0.5, reduction="none", divergence=divergence,
                           beta=0.3, backend=backend)  # fmt: skip
    rows.sum().backward()
    assert torch.isfinite(rows).all() and torch.isfinite(zz.grad).all()
    want, want_grad = _kd64(z, t, y, tau, 0.5, divergence, 0.3)
    loss_tol, grad_tol = kd_envelope(tau, scale, v, want, want_grad)
    assert ((rows.double() - want).abs() <= loss_tol).all(), (rows, want)
    assert ((zz.grad.double() - want_grad).abs() <= grad_tol).all()


@pytest.mark.parametrize("backend", cpu_backends("kd_loss_rows"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kd_low_precision_inputs_compute_in_float32(backend, dtype):
    """16-bit logits are read exactly and computed in float32: the loss bound is the float32
    one; the gradient adds one rounding to the input dtype."""
    z, t = (torch.randn(5, 200) * 8).to(dtype), (torch.randn(5, 200) * 8).to(dtype)
    y = torch.randint(0, 200, (5,))
    zz = z.clone().requires_grad_()
    rows = llmkern.kd_loss(zz, t, y, 2.0, 0.5, reduction="none", backend=backend)
    rows.sum().backward()
    want, want_grad = _kd64(z, t, y, 2.0, 0.5, "kl")
    loss_tol, grad_tol = kd_envelope(2.0, z.abs().max().item(), 200, want, want_grad)
    assert rows.dtype == torch.float32 and zz.grad.dtype == dtype
    assert ((rows.double() - want).abs() <= loss_tol).all()
    assert ((zz.grad.double() - want_grad).abs() <= grad_tol + U_OUT[dtype] * want_grad.abs()).all()


def test_kd_teacher_logits_or_log_probabilities_give_the_same_loss():
    z, t = torch.randn(4, 50) * 3, torch.randn(4, 50) * 3
    y = torch.randint(0, 50, (4,))
    a = llmkern.kd_loss(z, t, y, 3.0, 0.4)
    b = llmkern.kd_loss(z, torch.log_softmax(t, 1), y, 3.0, 0.4)
    torch.testing.assert_close(a, b)
