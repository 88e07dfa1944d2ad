"""Layer-wise least-squares reconstruction after pruning (llmkern.compress.reconstruct): the
per-row solve against torch.linalg.lstsq, its optimality, the layer order and input sharing of
the sequential driver, and prune(reconstruct=True) on small models."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmkern.compress import prune
from llmkern.compress.reconstruct import reconstruct, refit_kept_weights
from llmkern.ops.sparse24 import nm_mask


def _lstsq_reference(weight, x, mask, damp):
    """Row by row: argmin_w ||X_S w - X w_r||^2 + lambda ||w - w_r,S||^2 (a ridge towards the
    unpruned weights) with lambda = damp * mean diag(X^T X), by lstsq on the augmented system,
    in float64."""
    x = x.double()
    lam = damp * float((x * x).sum(0).mean())
    out = torch.zeros_like(weight, dtype=torch.float64)
    for r in range(weight.shape[0]):
        s = mask[r].nonzero().flatten()
        if s.numel() == 0:
            continue
        a = torch.cat([x[:, s], lam**0.5 * torch.eye(s.numel(), dtype=torch.float64)])
        b = torch.cat([x @ weight[r].double(), lam**0.5 * weight[r, s].double()])
        out[r, s] = torch.linalg.lstsq(a, b[:, None]).solution.flatten()
    return out


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    k4=st.integers(1, 12),
    tokens=st.integers(1, 80),
    kind=st.sampled_from(["2:4", "random", "some rows full", "some rows empty"]),
    seed=st.integers(0, 2**16),
)
def test_refit_matches_lstsq_per_row(n, k4, tokens, kind, seed):
    g = torch.Generator().manual_seed(seed)
    k = 4 * k4
    w = torch.randn(n, k, generator=g)
    x = torch.randn(tokens, k, generator=g) * torch.rand(k, generator=g) * 3  # uneven channels
    if kind == "2:4":
        mask = nm_mask(torch.rand(n, k, generator=g), 2, 4)
    else:  # rows keep different numbers of weights: the padded solve
        mask = torch.rand(n, k, generator=g) < 0.5
        if kind == "some rows full":
            mask[::2] = True
        elif kind == "some rows empty":
            mask[::2] = False
    got = refit_kept_weights(w, (x.T @ x).double(), mask, damp=0.01)
    want = _lstsq_reference(w, x, mask, 0.01)
    assert got.dtype == w.dtype
    assert bool((got[~mask] == 0).all())
    # float32 Cholesky on a damped system: relative error well under 1e-3 of the weights' scale
    torch.testing.assert_close(
        got.double(), want, atol=2e-4 * float(want.abs().max()) + 1e-6, rtol=1e-3
    )


def test_refit_is_better_than_masking_and_exact_when_nothing_is_pruned():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 32, generator=g) @ torch.randn(32, 32, generator=g)  # correlated inputs
    w = torch.randn(16, 32, generator=g)
    h = (x.T @ x).double()
    mask = nm_mask(w.abs(), 2, 4)
    refit = refit_kept_weights(w, h, mask, damp=1e-6)
    err = lambda v: float(((x @ (v - w).T) ** 2).sum())  # noqa: E731
    assert err(refit) < 0.7 * err(w * mask)
    full = refit_kept_weights(w, h, torch.ones_like(mask), damp=1e-8)
    torch.testing.assert_close(full, w, atol=1e-3, rtol=1e-3)


def test_refit_without_signal_keeps_the_masked_weight_and_checks_shapes():
    w = torch.randn(4, 8)
    mask = nm_mask(w.abs(), 2, 4)
    assert torch.equal(refit_kept_weights(w, torch.zeros(8, 8), mask), w * mask)
    with pytest.raises(ValueError, match=r"gram must be \[8, 8\] and mask \[4, 8\]"):
        refit_kept_weights(w, torch.zeros(4, 4), mask)
    with pytest.raises(ValueError, match="gram must be"):
        refit_kept_weights(w, torch.zeros(8, 8), mask[:, :4])


class Shared(nn.Module):
    """q, k, v read one input (one group, one Gram); out reads their combination."""

    def __init__(self, d=16):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, 8)

    def forward(self, x):
        return self.out(torch.tanh(self.q(x)) * self.k(x) + self.v(x))


def test_reconstruct_goes_in_execution_order_on_pruned_inputs():
    torch.manual_seed(0)
    m = Shared()
    data = [torch.randn(6, 16) for _ in range(3)]
    names = ["out", "v", "k", "q"]  # deliberately not the execution order
    targets = {n: m.get_submodule(n).weight.detach().clone() for n in names}
    masks = {n: nm_mask(targets[n].abs(), 2, 4) for n in names}
    for n in names:
        with torch.no_grad():
            m.get_submodule(n).weight.mul_(masks[n])
    reconstruct(m, targets, masks, data)

    # expected: q, k, v from the Gram of the raw input; out from the Gram of its input in the
    # model whose q, k and v are already re-fitted
    x = torch.cat(data)
    for n in ("q", "k", "v"):
        want = refit_kept_weights(targets[n], (x.T @ x).double(), masks[n])
        torch.testing.assert_close(m.get_submodule(n).weight.detach(), want)
    with torch.no_grad():
        mid = torch.tanh(m.q(x)) * m.k(x) + m.v(x)
    want = refit_kept_weights(targets["out"], (mid.T @ mid).double(), masks["out"])
    torch.testing.assert_close(m.out.weight.detach(), want, rtol=1e-4, atol=1e-5)


def test_reconstruct_reports_unreached_layers():
    m = Shared()
    m.unused = nn.Linear(16, 16)
    targets = {"unused": m.unused.weight.detach().clone()}
    with pytest.raises(ValueError, match="never reached.*unused"):
        reconstruct(
            m, targets, {"unused": torch.ones(16, 16, dtype=torch.bool)}, [torch.randn(2, 16)]
        )


@pytest.mark.parametrize("importance", ["magnitude", "wanda"])
def test_prune_with_reconstruct_is_closer_to_dense(importance):
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 16)
    )
    mix = torch.randn(32, 32)
    data = [torch.randn(4, 20, 32) @ mix for _ in range(6)]  # correlated input channels
    plain, refit = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(plain, importance=importance, calibration=data if importance == "wanda" else None)
    rep = prune(refit, importance=importance, calibration=data, reconstruct=True)
    assert "re-fitted" in rep.layers[0].action
    held_out = torch.randn(64, 32) @ mix
    with torch.no_grad():
        want = dense(held_out)
        e_plain = float((plain(held_out) - want).norm() / want.norm())
        e_refit = float((refit(held_out) - want).norm() / want.norm())
    assert e_refit < 0.75 * e_plain, (e_plain, e_refit)
    for lin in (refit[0], refit[2], refit[4]):  # still 2:4
        w = lin.to_float().weight
        assert bool(((w.reshape(-1, 4) != 0).sum(1) <= 2).all())


def test_prune_reconstruct_needs_calibration():
    with pytest.raises(ValueError, match="reconstruct=True needs calibration"):
        prune(nn.Sequential(nn.Linear(8, 8)), reconstruct=True)
