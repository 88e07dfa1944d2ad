"""The C++ CPU KD kernels on every ISA path (fixture ``cpu_isa``), against a float64 autograd
formulation written here (log_softmax / logsumexp / cross_entropy; no code shared with
llmkern.ops.kd), and against the op reference where semantics are llmkern-specific (duplicate
top-k indices)."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

import llmkern
from llmkern.cpu.kd import vector_math
from llmkern.ops import kd as kdops

CPU = {"backend": "cpu"}


def kl(log_a, log_b):
    """KL(a || b) per row from log-probabilities, with 0 log 0 = 0 (masked -inf entries)."""
    keep = log_a > -math.inf
    log_a, log_b = torch.where(keep, log_a, 0.0), torch.where(keep, log_b, 0.0)  # finite grads
    return torch.where(keep, log_a.exp() * (log_a - log_b), 0.0).sum(1)


def naive_rows(z, v, y, tau, alpha, divergence="kl", beta=0.5, ignore_index=-100):
    """Per-row Hinton KD loss in float64 from the textbook formulas (autograd gives dL/dz)."""
    z, v = z.double(), v.double()[:, : z.shape[1]]
    logq, logp = F.log_softmax(z / tau, dim=1), F.log_softmax(v / tau, dim=1)
    if divergence == "kl":
        div = kl(logp, logq)
    elif divergence == "reverse_kl":
        div = kl(logq, logp)
    else:
        keep = (logp > -math.inf) | (logq > -math.inf)  # log m = -inf where both are 0
        pair = torch.stack([logp + math.log(beta), logq + math.log(1 - beta)])
        logm = torch.logsumexp(torch.where(keep, pair, 0.0), dim=0).where(keep, -math.inf)
        div = beta * kl(logp, logm) + (1 - beta) * kl(logq, logm)
    if y is None:
        return tau**2 * div
    ce = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="none")
    return torch.where(y != ignore_index, alpha * tau**2 * div + (1 - alpha) * ce, 0.0)


def naive_mean(z, v, y, *args, **kw):
    rows = naive_rows(z, v, y, *args, **kw)
    n = rows.shape[0] if y is None else (y != -100).sum().clamp(min=1)
    return rows.sum() / n


def run_both(z, t, y, tau, alpha, divergence="kl", beta=0.5, **kw):
    """(loss, grad) of llmkern.kd_loss (cpu kernel) and of the float64 naive formula."""
    z1 = z.clone().requires_grad_()
    got = llmkern.kd_loss(z1, t, y, tau, alpha, divergence=divergence, beta=beta, **CPU, **kw)
    got.backward()
    z2 = z.double().requires_grad_()
    want = naive_mean(z2, t, y, tau, alpha, divergence, beta)
    want.backward()
    return got, z1.grad, want, z2.grad


def rel_err(got, want):
    """Max error relative to the largest reference entry."""
    return ((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()


def assert_grad_close(got, want, rel):
    """Within ``rel`` of the largest reference entry, or 1e-7 absolute: a float32 floor for
    gradients that are tiny differences of O(1) terms (JSD on near one-hot rows)."""
    err = (got.double() - want).abs().max().item()
    assert err <= rel * want.abs().max().item() + 1e-7, (err, want.abs().max().item())


def inputs(n, v, vt=None, scale=3.0, dtype=torch.float32):
    z = (torch.randn(n, v) * scale).to(dtype)
    t = (torch.randn(n, vt or v) * scale).to(dtype)
    y = torch.randint(0, v, (n,))
    if n > 2:
        y[1] = -100
    return z, t, y


# tau 1, 2 and 4 take the CE softmax from the tempered one (csrc/cpu/kd_row_impl.h)
TAUS, ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0), (0.0, 0.3, 1.0)


@functools.cache
def sweep_reference(v, divergence):
    """Inputs and float64 (loss, grad) for every (tau, alpha): computed once, shared by the
    ISA paths."""
    gen = torch.Generator().manual_seed(v)
    n = 5 if v <= 1000 else 2
    z = torch.randn(n, v, generator=gen) * 3
    t = torch.randn(n, v, generator=gen) * 3
    y = torch.randint(0, v, (n,), generator=gen)
    y[1] = -100

    def loss_and_grad(tau, alpha):
        z2 = z.double().requires_grad_()
        want = naive_mean(z2, t, y, tau, alpha, divergence, 0.3)
        want.backward()
        return want.detach(), z2.grad

    # The loss is linear in alpha: combine the KD-only and CE-only references.
    ce, ce_grad = loss_and_grad(1.0, 0.0)
    out = {}
    for tau in TAUS:
        kd, kd_grad = loss_and_grad(tau, 1.0)
        for a in ALPHAS:
            out[tau, a] = (a * kd + (1 - a) * ce, a * kd_grad + (1 - a) * ce_grad)
    return z, t, y, out


@pytest.mark.parametrize("v", [7, 1000, 32000, 50257])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_matches_float64_autograd_over_tau_alpha(cpu_isa, v, divergence):
    z, t, y, ref = sweep_reference(v, divergence)
    for (tau, alpha), (want, gw) in ref.items():
        z1 = z.clone().requires_grad_()
        got = llmkern.kd_loss(z1, t, y, tau, alpha, divergence=divergence, beta=0.3, **CPU)
        got.backward()
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6 * tau**2)
        assert_grad_close(z1.grad, gw, 2e-5)
        assert torch.all(z1.grad[y == -100] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_low_precision_inputs_gradient_within_1e2(cpu_isa, dtype, divergence):
    z, t, y = inputs(6, 1037, dtype=dtype)
    for tau, alpha in ((0.5, 0.3), (2.0, 1.0), (8.0, 0.0)):
        got, g, want, gw = run_both(z, t, y, tau, alpha, divergence)
        assert g.dtype == dtype and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * tau**2)
        assert rel_err(g, gw) <= 1e-2
        torch.testing.assert_close(g.double(), gw, rtol=1e-2, atol=1e-2 * gw.abs().max().item())


def test_mixed_dtypes_and_wider_teacher(cpu_isa):
    """bf16 student, float32 teacher with 9 extra vocabulary entries (dropped, renormalised)."""
    z, t, y = inputs(5, 333, vt=342)
    got, g, want, gw = run_both(z.bfloat16(), t, y, 2.0, 0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    assert rel_err(g, gw) <= 1e-2
    # The extra entries really are ignored: changing them changes nothing.
    t2 = t.clone()
    t2[:, 333:] = 50.0
    assert torch.equal(
        llmkern.kd_loss(z, t2, y, 2.0, 0.5, **CPU), llmkern.kd_loss(z, t, y, 2.0, 0.5, **CPU)
    )


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_soft_only_and_reductions(cpu_isa, divergence):
    z, t, y = inputs(6, 77)
    for labels in (None, y):
        for reduction in ("none", "sum", "mean"):
            z1, z2 = z.clone().requires_grad_(), z.double().requires_grad_()
            got = llmkern.kd_loss(z1, t, labels, 1.5, 0.4, -100, reduction, divergence, **CPU)
            rows = naive_rows(z2, t, labels, 1.5, 0.4, divergence)
            n = 6 if labels is None else int((y != -100).sum())
            want = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / n}[reduction]
            up = torch.rand_like(want)
            (got * up.float()).sum().backward()
            (want * up).sum().backward()
            torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
            assert rel_err(z1.grad, z2.grad) < 2e-5


def test_all_rows_ignored_zero_loss_zero_grad(cpu_isa):
    z, t, y = inputs(4, 500)
    y[:] = -100
    for reduction in ("mean", "sum"):
        z1 = z.clone().requires_grad_()
        loss = llmkern.kd_loss(z1, t, y, 2.0, 0.5, reduction=reduction, **CPU)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(z1.grad, torch.zeros_like(z))


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_extreme_logits(cpu_isa, divergence):
    """+-1e4 entries and -inf entries (a masked vocabulary, -inf in student and teacher alike)."""
    z, t, y = inputs(4, 300)
    z[0, 5], z[1, 7], t[0, 9], t[2, 11] = 1e4, -1e4, 1e4, -1e4
    z[3, 17] = t[3, 200] = 1e4
    for row, col in ((0, 40), (1, 41), (2, 42), (2, 43), (3, 44)):
        z[row, col] = t[row, col] = -math.inf
    y[0], y[3] = 5, 17
    for tau in (0.5, 8.0):
        got, g, want, gw = run_both(z, t, y, tau, 0.3, divergence)
        assert torch.isfinite(got) and torch.isfinite(g).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
        assert rel_err(g, gw) < 1e-5


def test_teacher_log_probs_same_as_logits(cpu_isa):
    z, t, y = inputs(5, 123)
    a = llmkern.kd_loss(z, t, y, 2.0, 0.5, **CPU)
    b = llmkern.kd_loss(z, torch.log_softmax(t, 1), y, 2.0, 0.5, **CPU)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_contiguous_inputs(cpu_isa):
    z, t, y = inputs(7, 90)
    zw = torch.randn(90, 7).T  # transposed
    zs = torch.randn(7, 200)[:, 10:100]  # column slice
    for zz in (zw, zs):
        got, g, want, gw = run_both(zz, t.T.contiguous().T, y, 2.0, 0.5)
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
        assert rel_err(g, gw) < 2e-5


def test_no_grad_forward_equals_grad_forward(cpu_isa):
    z, t, y = inputs(5, 999)
    with torch.no_grad():
        a = llmkern.kd_loss(z, t, y, 2.0, 0.5, reduction="none", **CPU)
    b = llmkern.kd_loss(z.requires_grad_(), t, y, 2.0, 0.5, reduction="none", **CPU)
    assert torch.equal(a, b.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_teacher_matches_float64_autograd(cpu_isa, dtype):
    n, v, k, tau = 6, 1000, 20, 2.0
    z, t, y = inputs(n, v, dtype=dtype)
    lp, idx = F.log_softmax(t.double(), 1).topk(k, dim=1)
    for labels, alpha in ((y, 0.4), (None, 0.0)):
        z1, z2 = z.clone().requires_grad_(), z.double().requires_grad_()
        got = llmkern.kd_loss_topk(z1, idx, lp.to(dtype), labels, tau, alpha, **CPU)
        p = F.softmax(lp.to(dtype).double() / tau, dim=1)
        logq = F.log_softmax(z2 / tau, dim=1).gather(1, idx)
        div = (p * (p.log() - logq)).sum(1)
        if labels is None:
            want = (tau**2 * div).mean()
        else:
            ce = F.cross_entropy(z2, y, reduction="none", ignore_index=-100)
            rows = torch.where(y != -100, alpha * tau**2 * div + (1 - alpha) * ce, 0.0)
            want = rows.sum() / (y != -100).sum()
        got.backward()
        want.backward()
        tol = 2e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
        assert rel_err(z1.grad, z2.grad) < tol


def test_topk_duplicate_indices_match_reference(cpu_isa):
    z, t, y = inputs(4, 50)
    idx = torch.randint(0, 50, (4, 12))
    idx[:, 1] = idx[:, 0]
    idx[2, :] = y[0].clamp(min=0)  # every entry on one index, the label's
    lp = torch.randn(4, 12)
    got = torch.ops.llmkern_C.kd_loss_topk_rows(z, idx, lp, y, 2.0, 0.3, -100, True)
    want = kdops.kd_loss_topk_rows_ref(z, idx, lp, y, 2.0, 0.3, -100, True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-7)


def test_vector_exp_and_log_accuracy(cpu_isa):
    """The documented accuracy of each ISA's exp (2 ulp relative on [-87.3, 0]; at most a
    denormal below, 0 for -inf) and log (error <= 4e-7 max(1, |log x|) for x in [1e-30, 1e4], -inf at 0)."""
    x = torch.cat([-torch.rand(200_001) * 87.3, torch.tensor([0.0, -1e-8, -88.0, -1e4, -math.inf])])
    y = vector_math(x, "exp")
    ref = x.double().exp()
    rel = ((y.double() - ref).abs() / ref.clamp(min=1e-300))[ref > 1e-37]
    assert rel.max().item() <= 2.4e-7
    assert y[-3].item() < 1.2e-38 and y[-2:].eq(0).all()  # below the normal range; -1e4, -inf
    x = torch.cat([torch.logspace(-30, 4, 200_003), torch.tensor([1.0, 0.0])])
    y = vector_math(x, "log")
    ref = x.double().log()[:-1]
    err = (y[:-1].double() - ref).abs() / ref.abs().clamp(min=1.0)
    assert err.max().item() <= 4e-7 and y[-1].item() == -math.inf
