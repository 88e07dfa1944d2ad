"""2:4 sparse linear on CPU vs dense in the same dtype, side by side.

For each M (rows of x) and weight shape (K, N):
- fp32, bf16 (and fp16 with --cases): dense ``nn.Linear`` (baseline), the raw 2:4 kernel (``2:4 kernel``), and
  ``Sparse24Linear`` with its backend selection (``2:4 module``: the 2:4 kernels, or the dense
  path for the rows in DENSE_ROWS; the ``path`` column says which ran);
- int8 weight-only with fp32 x: llmkern's dense int8 weight-only module (``dense int8 w8``,
  Int8WeightOnlyLinear: the baseline, module against module), torch's own weight-only kernel
  (``torch int8pack``: torch._weight_int8pack_mm, as torchao/gpt-fast use it; M <= 8 only, its
  fp32 path is 5-10x slower than fp32 nn.Linear beyond) and ``2:4 int8 w8`` (the module);
- W8A8 with fp32 x: llmkern's dense W8A8 module (Int8Linear), torch's dynamic int8 Linear
  (``torch dynamic``, FBGEMM) and the 2:4 W8A8 module.

Shapes (K, N): MiniLM's 384x384, 384x1536, 1536x384 and Llama's 2048x2048, 2048x5632, 5632x2048,
4096x4096, each at a default subset of M = 1..4096 (``--ms``/``--shapes`` for others).

Timing alternates the implementations call by call (so load changes on this shared machine hit
all of them alike) and reports medians. For M <= 64 the weights are rotated among enough copies
to exceed the last-level cache, so DRAM is measured as in decoding; up to M = 8 each row also
carries the share of the measured read bandwidth its weight bytes imply (``%bw``). The goals of
the 2:4 issue follow the table, for the CPU model and ISA path printed in the header.

    flock /tmp/llmkern_bench.lock python bench/bench_sparse24.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch: benchmark.page_policy()

import argparse
import statistics
import time

import torch

from llmkern.apps import benchmark as B
from llmkern.cpu.sparse24 import dense_rows_table
from llmkern.nn import Int8Linear, Int8WeightOnlyLinear, Sparse24Linear

MINILM = ((384, 384), (384, 1536), (1536, 384))
LLAMA = ((2048, 2048), (2048, 5632), (5632, 2048), (4096, 4096))
# Default M per shape family: the decode range of the goals (M <= 8) and the large-M fp32 goal;
# bf16 at large M on the Llama shapes takes seconds a call on 2 cores, so they stop at 256.
MINILM_MS = (1, 8, 64, 256, 1024, 4096)
LLAMA_MS = (1, 4, 8, 64, 256)
DECODE_MAX_M = 8
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


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def sparse_bytes(mod: Sparse24Linear) -> int:
    """What the 2:4 kernel reads: kept values, metadata, int8 scales."""
    return nbytes(mod.values, mod.meta, mod.w_scale)


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
    path = "dense" if sparse[0].runs_dense(m, dtype) else "2:4"
    weight = {"dense nn.Linear": nbytes(w), "2:4 module": sparse_bytes(sparse[0]),
              "2:4 kernel": sparse_bytes(sparse[0])}  # fmt: skip
    return interleaved(fns, budget, count), {"2:4 module": path}, "dense nn.Linear", weight


def int8_case(m, k, n, form, budget):
    count = copies(n * k, m)
    lins = [torch.nn.Linear(k, n, bias=False) for _ in range(count)]
    sparse = [Sparse24Linear.from_float(lin, int8=form).requires_grad_(False) for lin in lins]
    # The dense modules users would swap in (each keeps a packed copy; the kernel reads only it).
    make = Int8WeightOnlyLinear.from_float if form == "w8" else Int8Linear.from_float
    dense_mods = [make(lin).requires_grad_(False) for lin in lins]
    x = torch.randn(m, k)
    base = f"dense int8 {form}"
    fns = {base: lambda i: dense_mods[i % count](x)}
    # What the dense kernel reads: the packed weight (w8 packs its scales into it).
    d = dense_mods[0]
    dense_bytes = nbytes(d._packed) + (nbytes(d.weight_scale) if form == "w8a8" else 0)
    weight = {base: dense_bytes, f"2:4 int8 {form}": sparse_bytes(sparse[0])}
    if form == "w8" and m <= DECODE_MAX_M and B.has_int8pack_mm():  # torch's slow path beyond
        torch_w8 = [B.TorchInt8PackLinear(lin) for lin in lins]
        fns["torch int8pack"] = lambda i: torch_w8[i % count](x)
        weight["torch int8pack"] = nbytes(torch_w8[0].weight_int8, torch_w8[0].scales)
    if form == "w8a8":
        dynamic = [B.torch_dynamic_int8(lin) for lin in lins]
        fns["torch dynamic"] = lambda i: dynamic[i % count](x)
        weight["torch dynamic"] = n * k  # int8, one scale per tensor
    fns[f"2:4 int8 {form}"] = lambda i: sparse[i % count](x)
    path = "dense" if sparse[0].runs_dense(m, torch.float32) else "2:4"
    return interleaved(fns, budget, count), {f"2:4 int8 {form}": path}, base, weight


# The 2:4 issue's goals: (case, baseline impl, 2:4 impl, which M, target ratio). The 2:4 side is
# the module, with its own dense/2:4 choice, as users run it.
GOALS = (
    ("bf16", "dense nn.Linear", "2:4 module", lambda m: m <= DECODE_MAX_M, 1.5),
    ("w8", "dense int8 w8", "2:4 int8 w8", lambda m: m <= DECODE_MAX_M, 1.5),
    ("fp32", "dense nn.Linear", "2:4 module", lambda m: True, 1.0),
    ("fp32", "dense nn.Linear", "2:4 module", lambda m: m >= 256, 1.3),
)


def goals(rows: list[B.Row]) -> list[str]:
    """The goals as measured ratios (>= 1 means met), for every shape and M measured."""
    t = {(r.shape["M"], r.shape["K"], r.shape["N"], r.dtype, r.impl): r.median_ms for r in rows}
    checks = []
    for m, k, n in sorted({(r.shape["M"], r.shape["K"], r.shape["N"]) for r in rows}):
        for case, base, impl, applies, target in GOALS:
            if applies(m) and (m, k, n, case, base) in t and (m, k, n, case, impl) in t:
                ratio = t[(m, k, n, case, base)] / t[(m, k, n, case, impl)]
                goal = f"{case}: {impl}/{base} >= {target}"
                checks.append((f"M={m} K={k} N={n}", goal, ratio / target))
    return B.goal_lines(checks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="M in {1, 8, 256}, K x N = 2048x5632")
    ap.add_argument("--cases", default="fp32,bf16,w8,w8a8")
    ap.add_argument("--shapes", default=None, help="K,N pairs, e.g. 4096x4096,384x1536")
    ap.add_argument("--ms", default=None, help="comma-separated M values")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = [(m, k, n) for k, n in MINILM for m in MINILM_MS]
    plan += [(m, k, n) for k, n in LLAMA for m in LLAMA_MS]
    if args.quick:
        plan = [(m, 2048, 5632) for m in (1, 8, 256)]
    if args.shapes or args.ms:
        kns = sorted({(k, n) for _, k, n in plan})
        if args.shapes:
            kns = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        ms = sorted({m for m, _, _ in plan})
        if args.ms:
            ms = [int(v) for v in args.ms.split(",")]
        plan = [(m, k, n) for k, n in kns for m in ms]
    budget = 0.6 if args.quick else 1.0
    read_bw = B.read_bandwidth_gbs()
    print(B.header())
    print(f"read bandwidth {read_bw:.1f} GB/s (%bw = weight bytes / this / time, M <= "
          f"{DECODE_MAX_M})", flush=True)  # fmt: skip
    rows = []
    torch.manual_seed(0)
    with torch.inference_mode():
        for m, k, n in plan:
            for case in args.cases.split(","):
                if case in FLOAT_CASES:
                    ms_, paths, base, weight = float_case(m, k, n, FLOAT_CASES[case], budget)
                else:
                    ms_, paths, base, weight = int8_case(m, k, n, case, budget)
                new = []
                for impl, t_ms in ms_.items():
                    extra = {"path": paths[impl]} if impl in paths else {}
                    if impl in weight:
                        extra["weight_bytes"] = weight[impl]
                        if m <= DECODE_MAX_M:
                            extra["pct_read_bw"] = round(
                                100 * B.floor_ms(weight[impl], read_bw) / t_ms, 1
                            )
                    new.append(B.Row("sparse24_linear", {"M": m, "K": k, "N": n}, case, impl,
                                     t_ms, extra=extra))  # fmt: skip
                rows += B.with_speedups(new, base)
                for r in new:
                    path = f" [{r.extra['path']}]" if "path" in r.extra else ""
                    bw = f"  {r.extra['pct_read_bw']:5.1f}% bw" if "pct_read_bw" in r.extra else ""
                    print(f"M={m:<5} K={k:<6} N={n:<6} {case:<5} {r.impl:<18}{path:<8} "
                          f"{r.median_ms:9.3f} ms  {r.speedup_vs_baseline:5.2f}x{bw}", flush=True)  # fmt: skip
    print()
    print(B.format_table(rows))
    print()
    print(B.header())
    print("\n".join(goals(rows)))
    meta = {"read_bandwidth_gbs": round(read_bw, 2),
            "dense_rows": {str(k): v for k, v in dense_rows_table().items()}}  # fmt: skip
    B.write_json(rows, args.json, meta)


if __name__ == "__main__":
    main()
