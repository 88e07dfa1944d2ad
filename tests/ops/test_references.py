"""Each reference op against an independent plain-PyTorch/numpy formulation on random inputs.

The references are the ground truth every kernel is tested against, so they are checked here
against the textbook formulas: numpy rounding for quantisation, float64 matmuls for the GEMMs,
dense F.linear for 2:4, and float64 autograd of the naive KD formula for the loss gradients.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llmkern
from llmkern.ops import kd as kdops
from llmkern.ops.sparse24 import meta_cols

REF = {"backend": "reference"}


@pytest.mark.parametrize("m,k", [(1, 1), (3, 17), (8, 64), (5, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_per_token_matches_numpy(m, k, dtype):
    x = (torch.randn(m, k) * torch.logspace(-3, 3, m)[:, None]).to(dtype)
    q, s = llmkern.quantize_per_token(x, **REF)
    xn = x.float().numpy()
    absmax = np.abs(xn).max(axis=1)
    inv = (np.float32(127.0) / absmax).astype(np.float32)
    qn = np.clip(np.rint(xn * inv[:, None]), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(q.numpy(), qn)
    np.testing.assert_allclose(s.numpy(), absmax / np.float32(127.0), rtol=1e-7)


def test_quantize_per_token_zero_and_nonfinite_rows():
    x = torch.randn(4, 9)
    x[1] = 0
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    q, s = llmkern.quantize_per_token(x, **REF)
    assert s[1] == 1 and (q[1] == 0).all()
    assert torch.isnan(s[2]) and torch.isnan(s[3]) and (q[2:] == 0).all()
    assert torch.isfinite(s[0]) and q[0].abs().max() == 127


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 13, 33), (32, 64, 300)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_w8a8_matmul_matches_float64(m, n, k, out_dtype, bias):
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    # Realistic scales (absmax/127) keep fp16 outputs in range.
    xs, ws = (torch.rand(m) + 0.01) / 127, (torch.rand(n) + 0.01) / 127
    b = torch.randn(n) if bias else None
    out = llmkern.w8a8_matmul(xq, wq, xs, ws, b, out_dtype, **REF)
    acc = xq.double() @ wq.double().T  # exact: |acc| < 2**53
    want = acc * xs.double()[:, None] * ws.double()[None, :] + (b.double() if bias else 0)
    assert out.dtype == out_dtype
    tol = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[out_dtype]
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


def test_w8a8_int32_accumulation_is_exact_at_extremes():
    k = 4096
    xq = torch.full((2, k), -127, dtype=torch.int8)
    wq = torch.full((3, k), -128, dtype=torch.int8)
    out = llmkern.w8a8_matmul(xq, wq, torch.ones(2), torch.ones(3), **REF)
    assert (out == 127 * 128 * k).all()


@pytest.mark.parametrize("group_size", [0, 16, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_w8_matmul_and_quantize_weight(group_size, dtype):
    w = torch.randn(11, 37)
    wq, ws = llmkern.quantize_weight(w, group_size)
    deq = llmkern.ops.int8.dequantize_weight(wq, ws, group_size)
    step = ws if group_size == 0 else ws.repeat_interleave(group_size, 1)[:, :37]
    step = step if group_size else step[:, None]
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()  # round-to-nearest error bound
    x = torch.randn(5, 37).to(dtype)
    b = torch.randn(11)
    out = llmkern.w8_matmul(x, wq, ws, b, group_size, **REF)
    want = F.linear(x.double(), deq.double(), b.double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


# --- 2:4 ---------------------------------------------------------------------------------------


def _random_24(n, k, dtype=torch.float32):
    w = (
        torch.randn(n, k).to(dtype)
        if dtype != torch.int8
        else torch.randint(-128, 128, (n, k)).to(dtype)
    )
    return llmkern.prune_24(w, torch.rand(n, k))


@pytest.mark.parametrize("n,k", [(1, 4), (3, 12), (16, 64), (5, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8])
def test_compress_roundtrip_and_layout(n, k, dtype):
    w = _random_24(n, k, dtype)
    values, meta = llmkern.compress_24(w, **REF)
    assert values.shape == (n, k // 2) and values.dtype == dtype
    assert meta.shape == (n, meta_cols(k)) and meta.dtype == torch.uint8
    assert torch.equal(llmkern.decompress_24(values, meta, **REF), w)
    # Independent decode of the documented bit layout.
    for r in range(n):
        for g in range(k // 4):
            code = (int(meta[r, g // 2]) >> (4 * (g % 2))) & 0xF
            i0, i1 = code & 3, code >> 2
            assert i0 < i1
            assert values[r, 2 * g] == w[r, 4 * g + i0] and values[r, 2 * g + 1] == w[r, 4 * g + i1]
            others = [j for j in range(4) if j not in (i0, i1)]
            assert all(w[r, 4 * g + j] == 0 for j in others)


def test_compress_groups_with_fewer_nonzeros():
    w = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0]])
    values, meta = llmkern.compress_24(w)
    assert torch.equal(llmkern.decompress_24(values, meta), w)


def test_compress_rejects_non_24_naming_the_group():
    w = _random_24(4, 16)
    w[2, 9] = w[2, 10] = w[2, 11] = w[2, 8] = 1.0
    with pytest.raises(ValueError, match=r"row 2, columns 8\.\.11"):
        llmkern.compress_24(w)
    with pytest.raises(ValueError, match="multiple of 4"):
        llmkern.compress_24(torch.zeros(2, 6))


def test_prune_24_keeps_the_two_highest_scores():
    w = torch.arange(1.0, 9.0).reshape(1, 8)
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 9.0, 1.0]])
    pruned = llmkern.prune_24(w, scores)
    assert torch.equal(pruned, torch.tensor([[1.0, 0, 3.0, 0, 0, 6.0, 7.0, 0]]))
    assert (
        llmkern.ops.sparse24.first_violation(llmkern.prune_24(torch.randn(6, 16), n=4, m=8), 4, 8)
        is None
    )


@pytest.mark.parametrize("m,n,k", [(1, 5, 8), (9, 17, 36), (33, 8, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sparse24_matmul_matches_dense_linear(m, n, k, dtype):
    w = _random_24(n, k, dtype)
    values, meta = llmkern.compress_24(w)
    x, b = torch.randn(m, k).to(dtype), torch.randn(n)
    out = llmkern.sparse24_matmul(x, values, meta, b, **REF)
    want = F.linear(x.double(), w.double(), b.double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


def test_sparse24_int8_forms_match_dense_int8():
    m, n, k = 6, 10, 40
    wq = _random_24(n, k, torch.int8)
    values, meta = llmkern.compress_24(wq)
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    xs, ws = torch.rand(m) + 0.1, torch.rand(n) + 0.1
    got = llmkern.sparse24_w8a8_matmul(xq, values, meta, xs, ws, None, torch.float32, **REF)
    torch.testing.assert_close(got, llmkern.w8a8_matmul(xq, wq, xs, ws, **REF), rtol=0, atol=0)
    x = torch.randn(m, k)
    got = llmkern.sparse24_w8_matmul(x, values, meta, ws, **REF)
    torch.testing.assert_close(got, llmkern.w8_matmul(x, wq, ws, **REF), rtol=0, atol=0)


# --- KD losses: against float64 autograd of the naive formulas ----------------------------------


def naive_kd(z, v, y, tau, alpha, ignore_index, reduction, divergence, beta):
    """Textbook formulation in float64 with autograd (no shared code with the reference)."""
    vs = z.shape[1]
    logq = F.log_softmax(z / tau, dim=1)
    logp = F.log_softmax(v[:, :vs] / tau, dim=1)
    if divergence == "kl":
        div = F.kl_div(logq, logp, log_target=True, reduction="none").sum(1)
    elif divergence == "reverse_kl":
        div = F.kl_div(logp, logq, log_target=True, reduction="none").sum(1)
    else:
        p, q = logp.exp(), logq.exp()
        logm = torch.log(beta * p + (1 - beta) * q)
        div = beta * F.kl_div(logm, logp, log_target=True, reduction="none").sum(1) + (
            1 - beta
        ) * F.kl_div(logm, logq, log_target=True, reduction="none").sum(1)
    if y is None:
        rows = tau**2 * div
        valid = torch.ones_like(rows, dtype=torch.bool)
    else:
        valid = y != ignore_index
        ce = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="none")
        rows = torch.where(valid, alpha * tau**2 * div + (1 - alpha) * ce, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / valid.sum().clamp(min=1)


def _kd_inputs(n, v, vt=None, ignore_some=True):
    z = torch.randn(n, v, dtype=torch.float64) * 3
    t = torch.randn(n, vt or v, dtype=torch.float64) * 3
    y = torch.randint(0, v, (n,))
    if ignore_some and n > 1:
        y[::3] = -100
    return z, t, y


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("tau,alpha", [(0.5, 0.0), (1.0, 0.3), (2.0, 1.0), (8.0, 0.5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kd_reference_loss_and_grad_match_autograd(divergence, tau, alpha, reduction):
    z, t, y = _kd_inputs(6, 37)
    args = (y, tau, alpha, -100, reduction, divergence, 0.3)
    z1 = z.clone().requires_grad_()
    got = llmkern.kd_loss(z1, t, *args, **REF)
    z2 = z.clone().requires_grad_()
    want = naive_kd(z2, t, *args)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(want)
    (got * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_kd_reference_soft_only_and_vocab_mismatch(divergence):
    z, t, _ = _kd_inputs(5, 20, vt=26)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    got = llmkern.kd_loss(z1, t, None, 2.0, 0.7, divergence=divergence, **REF)
    want = naive_kd(z2, t, None, 2.0, 0.7, -100, "mean", divergence, 0.5)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(z1.grad, z2.grad)


def test_kd_reference_all_rows_ignored_is_zero_without_nan():
    z, t, y = _kd_inputs(4, 9)
    y[:] = -100
    z = z.float().requires_grad_()
    loss = llmkern.kd_loss(z, t.float(), y, 2.0, 0.5)
    loss.backward()
    assert loss.item() == 0 and torch.equal(z.grad, torch.zeros_like(z))


def test_kd_reference_float32_output_for_low_precision_inputs():
    z, t, y = _kd_inputs(3, 11)
    loss = llmkern.kd_loss(z.bfloat16(), t.bfloat16(), y, 1.5, 0.5)
    assert loss.dtype == torch.float32


def test_kd_topk_reference_matches_autograd():
    n, v, k, tau = 5, 30, 6, 2.0
    z, t, y = _kd_inputs(n, v)
    logp = F.log_softmax(t, dim=1)
    lp, idx = logp.topk(k, dim=1)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    got = llmkern.kd_loss_topk(z1, idx, lp, y, tau, 0.4, **REF)
    p = F.softmax(lp / tau, dim=1)
    logq = F.log_softmax(z2 / tau, dim=1).gather(1, idx)
    div = (p * (p.log() - logq)).sum(1)
    valid = y != -100
    ce = F.cross_entropy(z2, y, reduction="none")
    rows = torch.where(valid, 0.4 * tau**2 * div + 0.6 * ce, 0.0)
    want = rows.sum() / valid.sum()
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(z1.grad, z2.grad)


def test_kd_topk_with_full_support_equals_dense_kl():
    z, t, y = _kd_inputs(4, 12)
    lp, idx = F.log_softmax(t, 1).topk(12, dim=1)
    a = llmkern.kd_loss_topk(z, idx, lp, y, 3.0, 0.5)
    b = llmkern.kd_loss(z, t, y, 3.0, 0.5)
    torch.testing.assert_close(a, b)


def test_fused_linear_kd_reference_matches_autograd():
    n, hs, ht, v = 7, 16, 24, 40
    hs_, ws_ = torch.randn(n, hs, dtype=torch.float64), torch.randn(v, hs, dtype=torch.float64) / 4
    ht_, wt_ = (
        torch.randn(n, ht, dtype=torch.float64),
        torch.randn(v + 3, ht, dtype=torch.float64) / 4,
    )
    y = torch.randint(0, v, (n,))
    a = [hs_.clone().requires_grad_(), ws_.clone().requires_grad_()]
    b = [hs_.clone().requires_grad_(), ws_.clone().requires_grad_()]
    got = kdops.fused_linear_kd_loss_ref(a[0], a[1], ht_, wt_, y, 2.0, 0.5)
    want = naive_kd(b[0] @ b[1].T, ht_ @ wt_.T, y, 2.0, 0.5, -100, "mean", "kl", 0.5)
    got.backward()
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[0].grad.double(), b[0].grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a[1].grad.double(), b[1].grad, rtol=1e-4, atol=1e-6)
