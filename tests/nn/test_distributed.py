"""A KD training step of a compressed student (Int8LinearQAT, Sparse24Linear) under
DistributedDataParallel with gloo, two processes on loopback, gives the same gradients as one
process on the whole batch."""

import torch

import llmkern.nn as lnn

N, D, H, V = 12, 24, 32, 50
TAU, ALPHA = 2.0, 0.5


def student():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        lnn.Int8LinearQAT.from_float(torch.nn.Linear(D, H)),
        torch.nn.GELU(),
        lnn.Sparse24Linear.from_float(torch.nn.Linear(H, V)),
    )


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g)
    teacher = torch.randn(N, V, generator=g) * 3
    labels = torch.randint(0, V, (N,), generator=g)
    return x, teacher, labels


def kd_step(model, x, teacher, labels):
    """One training step's backward: mean KD loss over the rows given."""
    loss = lnn.KDLoss(TAU, ALPHA, divergence="kl")(model(x), teacher, labels)
    loss.backward()
    return loss.detach()


def _worker(rank, world):
    model = torch.nn.parallel.DistributedDataParallel(student())
    x, teacher, labels = batch()
    rows = slice(rank * N // world, (rank + 1) * N // world)  # equal halves: mean of means
    loss = kd_step(model, x[rows], teacher[rows], labels[rows])
    grads = {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}
    return {"loss": loss, "grads": grads}


def test_ddp_kd_step_matches_single_process(ddp):
    results = ddp(_worker)
    model = student()
    loss = kd_step(model, *batch())
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(want) >= {"0.weight", "0.bias", "2.values", "2.bias"}, set(want)
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, loss)
    for r in results:  # DDP leaves the all-reduced (averaged) gradient on every rank
        assert set(r["grads"]) == set(want)
        for name, g in want.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-5, atol=1e-6, msg=name)
