"""The same compressed model called from 4 threads at once gives results identical (bitwise) to
serial calls: no shared scratch, lazily built cache or ISA state is raced by the kernels or
modules."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import llmkern
import llmkern.nn as lnn


def compressed_model(dtype):
    torch.manual_seed(0)
    lin = [torch.nn.Linear(a, b).to(dtype) for a, b in ((40, 48), (48, 36), (36, 32), (32, 24))]
    return torch.nn.Sequential(
        lnn.Int8Linear.from_float(lin[0]), torch.nn.GELU(),
        lnn.Int8WeightOnlyLinear.from_float(lin[1], group_size=16), torch.nn.ReLU(),
        lnn.Sparse24Linear.from_float(lin[2]), torch.nn.Tanh(),
        lnn.Sparse24Linear.from_float(lin[3], int8="w8a8"),
    ).eval()  # fmt: skip


def run_threads(fn, jobs, threads=4, rounds=3):
    """Every job ``rounds`` times from each of ``threads`` threads at once, each thread in its
    own order (rotated, every other one reversed)."""
    n = len(jobs)
    orders = []
    for t in range(threads):
        order = [(i + t) % n for i in range(n)]
        orders.append(order[::-1] if t % 2 else order)

    def worker(order):
        return [(i, fn(jobs[i])) for _ in range(rounds) for i in order]

    with ThreadPoolExecutor(threads) as pool:
        return [r for part in pool.map(worker, orders) for r in part]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compressed_model_from_4_threads_matches_serial(dtype):
    model = compressed_model(dtype)
    inputs = [torch.randn(m, 40).to(dtype) for m in (1, 3, 8, 17, 33, 64, 5, 2)]

    def forward(x):
        with torch.inference_mode():  # grad mode is per thread: set it in each
            return model(x)

    serial = [forward(x) for x in inputs]
    results = run_threads(forward, inputs)
    assert len(results) == 4 * 3 * len(inputs)
    for i, out in results:
        assert torch.equal(out, serial[i]), f"input {i} differs when run concurrently"


def test_kd_loss_and_grad_from_4_threads_match_serial():
    loss_fn = lnn.KDLoss(2.0, 0.5, divergence="jsd", beta=0.3)
    jobs = [(torch.randn(n, 301) * 5, torch.randn(n, 301) * 5, torch.randint(0, 301, (n,)))
            for n in (1, 4, 9, 16)]  # fmt: skip

    def step(job):
        z, t, y = job
        z = z.clone().requires_grad_()
        loss = loss_fn(z, t, y)
        loss.backward()
        return loss.detach(), z.grad

    serial = [step(j) for j in jobs]
    for i, (loss, grad) in run_threads(step, jobs):
        assert torch.equal(loss, serial[i][0]) and torch.equal(grad, serial[i][1])


def test_ops_from_4_threads_with_different_isa_paths_match_serial(monkeypatch):
    """Concurrent calls on the default ISA path (chosen once, at first use) agree."""
    xq = torch.randint(-128, 128, (33, 200), dtype=torch.int8)
    wq = torch.randint(-128, 128, (21, 200), dtype=torch.int8)
    xs, ws = torch.rand(33) / 127, torch.rand(21) / 127
    jobs = list(range(6))

    def call(i):
        return llmkern.w8a8_matmul(xq[i:], wq, xs[i:], ws, out_dtype=torch.bfloat16)

    serial = [call(i) for i in jobs]
    for i, out in run_threads(call, jobs):
        assert torch.equal(out, serial[i])
