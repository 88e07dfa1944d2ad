"""Fused KD loss: forward + backward time and peak memory, side by side with the naive PyTorch
composition (log_softmax / kl_div / cross_entropy in float32, autograd producing the logits
gradient) and, on a GPU with liger-kernel installed, Liger's KL-div + cross-entropy losses.

    flock /tmp/llmkern_bench.lock python bench/bench_kd_loss.py [--json PATH] [--quick]

Rows: op "kd_loss" (logits in, N x V) for float32 and bfloat16 logits, and op
"fused_linear_kd_loss" (hidden states and LM heads in) against the materialised-logits version.
Peak memory is what the call allocates above its inputs, including the gradient it returns;
for the fused-linear rows the gradients of the student hidden states and head (the same in
both) are subtracted, so the number is the working memory of the loss.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch: benchmark.page_policy()

import argparse
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import llmkern
from llmkern.apps.benchmark import Row, format_table, peak_mb, time_fn, with_speedups, write_json

TAU, ALPHA = 2.0, 0.5


def naive_kd(z, t, y):
    logq = F.log_softmax(z.float() / TAU, dim=-1)
    logp = F.log_softmax(t.float() / TAU, dim=-1)
    kd = F.kl_div(logq, logp, log_target=True, reduction="batchmean") * TAU**2
    return ALPHA * kd + (1 - ALPHA) * F.cross_entropy(z.float(), y)


def liger_kd():
    """Liger's distillation pieces (KL-div on log-probabilities + fused cross-entropy), or None."""
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss
    except Exception:  # not installed: the row is simply absent
        return None
    kl, ce = LigerKLDIVLoss(reduction="batchmean", log_target=True), LigerCrossEntropyLoss()

    def loss(z, t, y):
        logq = F.log_softmax(z.float() / TAU, dim=-1)
        logp = F.log_softmax(t.float() / TAU, dim=-1)
        return ALPHA * TAU**2 * kl(logq, logp) + (1 - ALPHA) * ce(z, y)

    return loss


def bench_logits(n, v, dtype, device, reps):
    g = torch.Generator(device="cpu").manual_seed(0)
    z = (torch.randn(n, v, generator=g) * 3).to(device, dtype).requires_grad_()
    t = (torch.randn(n, v, generator=g) * 3).to(device, dtype)
    y = torch.randint(0, v, (n,), generator=g).to(device)
    impls = {
        "naive_torch": naive_kd,
        "llmkern": lambda z, t, y: llmkern.kd_loss(z, t, y, TAU, ALPHA),
    }
    if device == "cuda" and (lk := liger_kd()) is not None:
        impls["liger"] = lk
    rows = []
    for name, loss_fn in impls.items():

        def step(_i=0, loss_fn=loss_fn):
            z.grad = None
            loss_fn(z, t, y).backward()

        ms = time_fn(step, device=device, warmup=1, reps=reps, min_time_s=0.0)
        z.grad = None
        mem = peak_mb(step, device)
        z.grad = None
        shape = {"N": n, "V": v}
        rows.append(Row("kd_loss", shape, str(dtype).replace("torch.", ""), name, ms, mem))
    return rows


def bench_fused_linear(n, h, v, dtype, device, reps):
    g = torch.Generator(device="cpu").manual_seed(0)
    hs = torch.randn(n, h, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(v, h, generator=g) / h**0.5 * 3).to(device, dtype).requires_grad_()
    ht = torch.randn(n, h, generator=g).to(device, dtype)
    wt = (torch.randn(v, h, generator=g) / h**0.5 * 3).to(device, dtype)
    y = torch.randint(0, v, (n,), generator=g).to(device)

    def materialised():
        zs = hs.float() @ w.float().T
        with torch.no_grad():
            zt = ht.float() @ wt.float().T
        return naive_kd(zs, zt, y)

    impls = {
        "naive_materialised": materialised,
        "llmkern_fused": lambda: llmkern.fused_linear_kd_loss(hs, w, ht, wt, y, TAU, ALPHA),
    }
    grads_mb = (hs.numel() * hs.element_size() + w.numel() * w.element_size()) / 2**20
    rows = []
    for name, loss_fn in impls.items():

        def step(_i=0, loss_fn=loss_fn):
            hs.grad = w.grad = None
            loss_fn().backward()

        ms = time_fn(step, device=device, warmup=1, reps=reps, min_time_s=0.0)
        hs.grad = w.grad = None
        mem = peak_mb(step, device) - grads_mb
        hs.grad = w.grad = None
        shape = {"N": n, "H": h, "V": v}
        rows.append(
            Row("fused_linear_kd_loss", shape, str(dtype).replace("torch.", ""), name, ms, mem)
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dev = args.device
    if args.quick:
        logits_shapes, fl_shape, reps = [(512, 32000), (128, 128256)], (512, 256, 32000), 3
    else:
        logits_shapes, fl_shape, reps = [(4096, 32000), (1024, 128256)], (4096, 768, 32000), 3
    rows = []
    for n, v in logits_shapes:
        for dtype in (torch.float32, torch.bfloat16):
            rows += bench_logits(n, v, dtype, dev, reps)
    rows = with_speedups(rows, "naive_torch")
    fl = with_speedups(
        bench_fused_linear(*fl_shape, torch.float32, dev, reps), "naive_materialised"
    )
    rows += fl
    for r in rows:  # memory relative to the baseline of the same op/shape/dtype
        base = next(b for b in rows if b.op == r.op and b.shape == r.shape and b.dtype == r.dtype
                    and b.impl == r.baseline)  # fmt: skip
        r.extra = {"peak_mem_vs_baseline": round(r.peak_mem_mb / max(base.peak_mem_mb, 1e-9), 3)}
    print(format_table(rows))
    print("peak memory / baseline: " + ", ".join(
        f"{r.op} {r.shape} {r.dtype} {r.impl}: {r.extra['peak_mem_vs_baseline']}" for r in rows
        if r.impl != r.baseline))  # fmt: skip
    write_json(rows, args.json, {"device": dev, "tau": TAU, "alpha": ALPHA, "quick": args.quick})


if __name__ == "__main__":
    main()
