"""2:4 sparse linear on CPU vs dense in the same dtype, side by side.

For each M (rows of x) and weight shape (K, N):
- fp32, bf16 (and fp16 with --cases): dense ``nn.Linear`` (baseline), the raw 2:4 kernel (``2:4 kernel``), and
  ``Sparse24Linear`` with its backend selection (``2:4 module``: the kernel up to
  SPARSE_MAX_ROWS, the dense path above; the ``path`` column says which ran);
- int8 weight-only with fp32 x: llmkern's dense int8 weight-only kernel (``dense int8 w8``,
  llmkern_C.int8_w8_linear on its packed weight: the baseline) vs ``2:4 int8 w8`` (the module);
- W8A8 with fp32 x: llmkern's dense W8A8 linear vs the 2:4 W8A8 module.

Timing alternates the implementations call by call (so load changes on this shared machine hit
all of them alike) and reports medians. For M <= 64 the weights are rotated among enough copies
to exceed the last-level cache, so DRAM is measured as in decoding.

    flock /tmp/llmkern_bench.lock python bench/bench_sparse24.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import llmkern
from llmkern import benchmark as B
from llmkern.cpu import int8 as cpu_int8
from llmkern.nn import Sparse24Linear
from llmkern.nn.sparse24 import SPARSE_MAX_ROWS

MS = (1, 4, 16, 64, 256, 1024, 4096)
KNS = ((4096, 4096), (4096, 11008), (11008, 4096))
FLOAT_CASES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERNEL_MAX_M = 1024  # the raw kernel is not timed above this (far slower than dense there)


def interleaved(fns: dict, budget_s: float, copies: int = 1, max_reps: int = 40) -> dict:
    """Median ms of each fn(i), calling them in turn round after round. Every one of the
    ``copies`` weight copies is used once before timing, so first-use work (the dense
    fallback's cached weight) is never timed."""
    for f in fns.values():
        for i in range(copies):
            f(i)
    t0 = time.perf_counter()
    for f in fns.values():
        f(1)
    per_round = time.perf_counter() - t0
    reps = int(max(5, min(max_reps, budget_s / max(per_round, 1e-9))))
    times = {k: [] for k in fns}
    for i in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f(i)
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def copies(nbytes: int, m: int) -> int:
    return B.copies_to_exceed_cache(nbytes) if m <= 64 else 1


def float_case(m, k, n, dtype, budget):
    w = torch.randn(n, k, dtype=dtype)
    count = copies(w.numel() * w.element_size(), m)
    dense = [torch.nn.Linear(k, n, bias=False, dtype=dtype) for _ in range(count)]
    sparse = [Sparse24Linear.from_float(lin).requires_grad_(False) for lin in dense]
    kernel = [Sparse24Linear.from_float(lin).requires_grad_(False) for lin in dense[:1]]
    for mod in kernel:
        mod.max_sparse_rows = None  # always the 2:4 kernel
    x = torch.randn(m, k, dtype=dtype)
    fns = {"dense nn.Linear": lambda i: dense[i % count](x),
           "2:4 module": lambda i: sparse[i % count](x)}  # fmt: skip
    if m <= KERNEL_MAX_M:
        if count > 1:
            kernel = [Sparse24Linear.from_float(lin).requires_grad_(False) for lin in dense]
            for mod in kernel:
                mod.max_sparse_rows = None
        fns["2:4 kernel"] = lambda i: kernel[i % len(kernel)](x)
    limit = sparse[0].sparse_limit(dtype)
    path = "2:4" if limit is None or m <= limit else "dense"
    return interleaved(fns, budget, count), {"2:4 module": path}, "dense nn.Linear"


def int8_case(m, k, n, form, budget):
    count = copies(n * k, m)
    lins = [torch.nn.Linear(k, n, bias=False) for _ in range(count)]
    sparse = [Sparse24Linear.from_float(lin, int8=form).requires_grad_(False) for lin in lins]
    packed = []
    for lin in lins:
        w_q, scale = llmkern.quantize_weight(lin.weight.detach())
        packed.append(
            (cpu_int8.pack_w8(w_q, scale) if form == "w8" else cpu_int8.pack_w8a8(w_q), scale)
        )
    x = torch.randn(m, k)
    base = f"dense int8 {form}"
    if form == "w8":
        dense = lambda i: torch.ops.llmkern_C.int8_w8_linear(x, None, packed[i % count][0])
    else:
        dense = lambda i: torch.ops.llmkern_C.int8_w8a8_linear(
            x, packed[i % count][1], None, None, packed[i % count][0]
        )
    fns = {base: dense, f"2:4 int8 {form}": lambda i: sparse[i % count](x)}
    limit = sparse[0].sparse_limit(torch.float32)
    path = "2:4" if limit is None or m <= limit else "dense"
    return interleaved(fns, budget, count), {f"2:4 int8 {form}": path}, base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="M in {1, 4, 64, 1024}, K = N = 4096")
    ap.add_argument("--cases", default="fp32,bf16,w8,w8a8")
    ap.add_argument("--shapes", default=None, help="K,N pairs, e.g. 4096x4096,11008x4096")
    ap.add_argument("--ms", default=None, help="comma-separated M values")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = ap.parse_args()
    ms, kns = ((1, 4, 64, 1024), KNS[:1]) if args.quick else (MS, KNS)
    if args.shapes:
        kns = tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
    if args.ms:
        ms = tuple(int(v) for v in args.ms.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = 0.6 if args.quick else 1.5
    rows = []
    torch.manual_seed(0)
    with torch.inference_mode():
        for k, n in kns:
            for m in ms:
                for case in args.cases.split(","):
                    if case in FLOAT_CASES:
                        dtype = FLOAT_CASES[case]
                        ms_, paths, base = float_case(m, k, n, dtype, budget)
                    else:
                        ms_, paths, base = int8_case(m, k, n, case, budget)
                    new = [B.Row("sparse24_linear", {"M": m, "K": k, "N": n}, case, impl, t,
                                 extra={"path": paths[impl]} if impl in paths else {})
                           for impl, t in ms_.items()]  # fmt: skip
                    rows += B.with_speedups(new, base)
                    for r in new:
                        path = f" [{r.extra['path']}]" if r.extra else ""
                        print(f"M={m:<5} K={k:<6} N={n:<6} {case:<5} {r.impl:<18}{path:<8} "
                              f"{r.median_ms:9.3f} ms  {r.speedup_vs_baseline:5.2f}x", flush=True)  # fmt: skip
    print()
    print(B.format_table(rows))
    B.write_json(
        rows, args.json, {"sparse_max_rows": {str(k): v for k, v in SPARSE_MAX_ROWS.items()}}
    )


if __name__ == "__main__":
    main()
