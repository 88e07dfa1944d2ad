"""KD losses through the public API and the modules: the fused-linear form against the unfused
composition and float64 autograd, leading dimensions, torch.compile, autograd safety and bad
input. Kernel numerics per ISA are in tests/cpu/test_kd.py."""

import math

import pytest
import torch
import torch.nn.functional as F

import llmkern
from llmkern.backends import BackendUnavailableError
from llmkern.nn import FusedLinearKDLoss, KDLoss
from llmkern.ops import kd as kdops


def naive_kd_mean(z, v, y, tau, alpha, ignore_index=-100):
    """Float64 textbook Hinton loss (KL), mean over valid rows."""
    z, v = z.double(), v.double()[:, : z.shape[1]]
    logq, logp = F.log_softmax(z / tau, 1), F.log_softmax(v / tau, 1)
    div = (logp.exp() * (logp - logq)).sum(1)
    if y is None:
        return (tau**2 * div).mean()
    valid = y != ignore_index
    ce = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="none")
    rows = torch.where(valid, alpha * tau**2 * div + (1 - alpha) * ce, 0.0)
    return rows.sum() / valid.sum().clamp(min=1)


def heads(n, hs, ht, v, vt, dtype=torch.float32):
    return (
        torch.randn(n, hs).to(dtype),
        (torch.randn(v, hs) / hs**0.5 * 3).to(dtype),
        torch.randn(n, ht).to(dtype),
        (torch.randn(vt, ht) / ht**0.5 * 3).to(dtype),
    )


# --- fused linear ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_fused_linear_matches_unfused_composition(dtype, reduction, divergence):
    n, hs, ht, v = 37, 24, 40, 301
    h, w, th, tw = heads(n, hs, ht, v, v + 5, dtype)
    y = torch.randint(0, v, (n,))
    y[::5] = -100
    for chunk in (1, 8, None):
        a = [h.clone().requires_grad_(), w.clone().requires_grad_()]
        b = [h.clone().requires_grad_(), w.clone().requires_grad_()]
        args = (y, 2.0, 0.3, -100, reduction, divergence, 0.4)
        got = llmkern.fused_linear_kd_loss(a[0], a[1], th, tw, *args, chunk_size=chunk)
        want = kdops.fused_linear_kd_loss_ref(b[0], b[1], th, tw, *args)
        up = torch.rand_like(want)
        (got * up).sum().backward()
        (want * up).sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        for x, r in zip(a, b, strict=True):
            assert x.grad.dtype == dtype
            err = (x.grad.float() - r.grad.float()).abs().max() / r.grad.float().abs().max()
            assert err <= tol


def test_fused_linear_matches_float64_autograd_with_soft_only_and_wider_teacher():
    n, hs, ht, v = 19, 16, 12, 97
    h, w, th, tw = (x.double() for x in heads(n, hs, ht, v, v + 3))
    a = [h.float().requires_grad_(), w.float().requires_grad_()]
    b = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    got = llmkern.fused_linear_kd_loss(a[0], a[1], th.float(), tw.float(), None, 3.0, chunk_size=4)
    want = naive_kd_mean(b[0] @ b[1].T, th @ tw.T, None, 3.0, 0.5)
    got.backward()
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for x, r in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad.double(), r.grad, rtol=1e-4, atol=1e-6)


def test_fused_linear_16bit_head_in_vocabulary_blocks(monkeypatch):
    """bf16 heads are converted to float32 a vocabulary block at a time (here 3 blocks)."""
    monkeypatch.setattr(kdops, "HEAD_BLOCK_BYTES", 4 * 16 * 40)
    h, w, th, tw = heads(9, 16, 16, 100, 103, torch.bfloat16)
    y = torch.randint(0, 100, (9,))
    a = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    b = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    assert len(kdops._vocab_blocks(w)) == 3
    got = llmkern.fused_linear_kd_loss(a[0], a[1], th, tw, y, 2.0, chunk_size=4)
    want = kdops.fused_linear_kd_loss_ref(b[0], b[1], th, tw, y, 2.0)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for x, r in zip(a, b, strict=True):
        err = (x.grad.float() - r.grad.float()).abs().max() / r.grad.float().abs().max()
        assert err <= 1e-2


def test_fused_linear_frozen_head_and_no_grad():
    h, w, th, tw = heads(10, 8, 8, 50, 50)
    y = torch.randint(0, 50, (10,))
    hh = h.clone().requires_grad_()
    loss = llmkern.fused_linear_kd_loss(hh, w, th, tw, y, 2.0, chunk_size=3)
    loss.backward()
    assert hh.grad is not None and w.grad is None
    with torch.no_grad():
        again = llmkern.fused_linear_kd_loss(h, w, th, tw, y, 2.0)
    torch.testing.assert_close(again, loss.detach())


def test_fused_linear_all_rows_ignored():
    h, w, th, tw = heads(6, 8, 8, 20, 20)
    y = torch.full((6,), -100)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = llmkern.fused_linear_kd_loss(hh, ww, th, tw, y, 2.0)
    loss.backward()
    assert loss.item() == 0 and not hh.grad.any() and not ww.grad.any()


def test_fused_linear_chunk_rows_bound_memory():
    """The default chunk keeps the float32 logits of one chunk near CHUNK_LOGITS_BYTES."""
    assert kdops._chunk_rows(10**6, 32000, 32000, None) * 4 * 64000 <= kdops.CHUNK_LOGITS_BYTES
    assert kdops._chunk_rows(5, 32000, 32000, None) == 5
    assert kdops._chunk_rows(100, 10, 10, 7) == 7


# --- modules --------------------------------------------------------------------------------


def test_kd_module_flattens_leading_dims():
    z, t = torch.randn(2, 3, 40), torch.randn(2, 3, 40)
    y = torch.randint(0, 40, (2, 3))
    y[0, 0] = -100
    m = KDLoss(temperature=2.0, alpha=0.3)
    torch.testing.assert_close(
        m(z, t, y), llmkern.kd_loss(z.view(6, 40), t.view(6, 40), y.view(6), 2.0, 0.3)
    )
    rows = KDLoss(2.0, 0.3, reduction="none")(z, t, y)
    assert rows.shape == (2, 3) and rows[0, 0] == 0
    assert "temperature=2.0" in repr(m)


def test_fused_linear_module_matches_kd_module():
    h, w, th, tw = heads(12, 8, 6, 30, 30)
    y = torch.randint(0, 30, (3, 4))
    fm = FusedLinearKDLoss(2.0, 0.5, reduction="none", chunk_size=5)
    rows = fm(h.view(3, 4, 8), w, th.view(3, 4, 6), tw, y)
    want = KDLoss(2.0, 0.5, reduction="none")(
        (h @ w.T).view(3, 4, 30), (th @ tw.T).view(3, 4, 30), y
    )
    assert rows.shape == (3, 4)
    torch.testing.assert_close(rows, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_modules_under_torch_compile(reduction):
    z = torch.randn(2, 5, 33, requires_grad=True)
    t, y = torch.randn(2, 5, 33), torch.randint(0, 33, (2, 5))
    m = KDLoss(2.0, 0.5, reduction=reduction)
    eager = m(z, t, y).sum()
    (g1,) = torch.autograd.grad(eager, z)
    compiled = torch.compile(m, fullgraph=True)(z, t, y).sum()
    (g2,) = torch.autograd.grad(compiled, z)
    torch.testing.assert_close(eager, compiled)
    torch.testing.assert_close(g1, g2)
    h, w = torch.randn(2, 5, 8, requires_grad=True), torch.randn(33, 8, requires_grad=True)
    th, tw = torch.randn(2, 5, 6), torch.randn(33, 6)
    fm = FusedLinearKDLoss(2.0, 0.5, reduction=reduction, chunk_size=4)
    ga = torch.autograd.grad(fm(h, w, th, tw, y).sum(), (h, w))
    gb = torch.autograd.grad(torch.compile(fm, fullgraph=True)(h, w, th, tw, y).sum(), (h, w))
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b)


# --- autograd behaviour ----------------------------------------------------------------------


def test_second_backward_through_scaled_gradient_fails_loudly():
    """The backward scales the saved gradient in place; a retained graph must not silently
    reuse the scaled values."""
    z = torch.randn(4, 20, requires_grad=True)
    loss = llmkern.kd_loss(z, torch.randn(4, 20), None, 2.0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_gradient_flows_through_student_only():
    z, t = torch.randn(3, 10, requires_grad=True), torch.randn(3, 10, requires_grad=True)
    llmkern.kd_loss(z, t, None, 2.0).backward()
    assert z.grad is not None and t.grad is None


def test_float64_runs_on_reference_and_cpu_backend_refuses_it():
    z, t = torch.randn(3, 10, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)
    assert llmkern.kd_loss(z, t, None, 2.0).dtype == torch.float64
    with pytest.raises(BackendUnavailableError, match="float64"):
        llmkern.kd_loss(z, t, None, 2.0, backend="cpu")


# --- bad input -------------------------------------------------------------------------------


def _zty():
    return torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": math.nan}, ValueError, "temperature"),
        ({"temperature": math.inf}, ValueError, "temperature"),
        ({"temperature": "2"}, TypeError, "temperature"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"beta": 2.0}, ValueError, "beta"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"divergence": "tv"}, ValueError, "divergence"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index"),
    ],
)
def test_bad_options_raise(kwargs, err, match):
    z, t, y = _zty()
    with pytest.raises(err, match=match):
        llmkern.kd_loss(z, t, y, **{"temperature": 2.0, **kwargs})


def test_bad_tensors_raise():
    z, t, y = _zty()
    with pytest.raises(ValueError, match="labels must be in"):
        llmkern.kd_loss(z, t, torch.tensor([0, 1, 10, 2]), 2.0)
    with pytest.raises(ValueError, match="labels must be in"):
        llmkern.kd_loss(z, t, torch.tensor([0, -1, 3, 2]), 2.0)
    with pytest.raises(ValueError, match="labels must have shape"):
        llmkern.kd_loss(z, t, y[:3], 2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        llmkern.kd_loss(z, t[:, :9], y, 2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        llmkern.kd_loss(z, t[:3], y, 2.0)
    with pytest.raises(ValueError, match="one device"):
        llmkern.kd_loss(z, t.to("meta"), y, 2.0)
    with pytest.raises(TypeError, match="student_logits"):
        llmkern.kd_loss(z.long(), t, y, 2.0)
    with pytest.raises(ValueError, match="topk_indices"):
        llmkern.kd_loss_topk(z, torch.tensor([[0, 10]] * 4), torch.zeros(4, 2), y, 2.0)
    with pytest.raises(ValueError, match="topk_logprobs"):
        llmkern.kd_loss_topk(z, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 3), y, 2.0)


def test_bad_fused_linear_and_module_input_raise():
    h, w, th, tw = heads(4, 8, 6, 10, 10)
    y = torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="student_head"):
        llmkern.fused_linear_kd_loss(h, w[:, :7], th, tw, y)
    with pytest.raises(ValueError, match="teacher_head"):
        llmkern.fused_linear_kd_loss(h, w, th, tw[:9], y)
    with pytest.raises(ValueError, match="teacher_hidden"):
        llmkern.fused_linear_kd_loss(h, w, th[:3], tw, y)
    with pytest.raises(ValueError, match="labels must be in"):
        llmkern.fused_linear_kd_loss(h, w, th, tw, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="chunk_size"):
        llmkern.fused_linear_kd_loss(h, w, th, tw, y, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        llmkern.fused_linear_kd_loss(h, w, th, tw, y, temperature=-2.0)
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="divergence"):
        FusedLinearKDLoss(divergence="l2")
    with pytest.raises(ValueError, match="labels must have shape"):
        KDLoss()(torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.zeros(3, 2, dtype=torch.long))
