"""A KD training step of a compressed student (Int8LinearQAT, Sparse24Linear) under
DistributedDataParallel with gloo, two processes on loopback, gives the same gradients as one
process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(student())
        x, teacher, labels = batch()
        rows = slice(rank * N // world, (rank + 1) * N // world)  # equal halves: mean of means
        loss = kd_step(model, x[rows], teacher[rows], labels[rows])
        grads = {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks done before either tears down: a rank closing its gloo connections while
        # the other still uses them aborts the other (seen ~1 run in 5 without this).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_ddp_kd_step_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model = student()
    loss = kd_step(model, *batch())
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(want) >= {"0.weight", "0.bias", "2.values", "2.bias"}, set(want)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, loss)
    for r in results:  # DDP leaves the all-reduced (averaged) gradient on every rank
        assert set(r["grads"]) == set(want)
        for name, g in want.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-5, atol=1e-6, msg=name)
