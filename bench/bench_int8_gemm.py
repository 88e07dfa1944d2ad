"""INT8 GEMM on CPU: llmkern's int8 layers and kernels against torch's float and int8 paths.

Side by side, per shape (M tokens, K inputs, N outputs), in one process:

  fp32_linear      nn.Linear, float32 (the baseline of speedup_vs_baseline)
  bf16_linear      nn.Linear, bfloat16 weights and inputs
  torch_int_mm     torch._int_mm on int8 x_q and W, then the x_scale * w_scale + bias ops
  torch_dynamic    torch.ao dynamic quantized Linear (FBGEMM/oneDNN; quantises x itself)
  int8_linear      llmkern.nn.Int8Linear, end to end (activation quantisation included)
  int8_weight_only llmkern.nn.Int8WeightOnlyLinear (per-channel scales)
  w8a8_kernel      llmkern's W8A8 kernel alone on int8 x_q (pre-packed weight, fused epilogue)

and for M <= 8 (decode) the weight-only baseline ``torch_int8pack`` (torch._weight_int8pack_mm,
what torchao/gpt-fast use on CPU; its fp32 path is 5-10x slower than fp32 nn.Linear beyond M = 8)
and the weight-only pair again with bfloat16 x (``*_bf16``).

Shapes (K, N): MiniLM's 384x384, 384x1536, 1536x384 and Llama's 2048x2048, 2048x5632, 5632x2048,
4096x4096; the default run times a subset of M = 1..4096 per shape (a few minutes), ``--full``
every M of MS_ALL, ``--shapes`` any MxKxN list. For M <= 32 every implementation rotates among
enough copies of its weights to exceed the last-level cache, so DRAM is measured; weight-only
rows carry the read-bandwidth floor (int8 weight bytes / measured read bandwidth) and the share
of that bandwidth they reach. After the table, the goals of the int8 issue are checked as ratios
measured in this run, for the CPU model and ISA path printed in the header.

    flock /tmp/llmkern_bench.lock python bench/bench_int8_gemm.py [--quick | --full]
        [--json PATH] [--threads N] [--shapes 4096x1536x384,...]

On a machine shared with other jobs, torch's multi-threaded baselines lose whole scheduler time
slices at their thread barriers (times in multiples of 4 ms); compare with --threads 1 there.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch: benchmark.page_policy()

import argparse
import sys

import torch
from torch import nn

from llmkern import _ext
from llmkern.apps import benchmark as B
from llmkern.apps.benchmark import (
    Row,
    TorchInt8PackLinear,
    copies_to_exceed_cache,
    format_table,
    peak_mb,
    time_fn,
    torch_dynamic_int8,
    with_speedups,
    write_json,
)
from llmkern.cpu.int8 import pack_w8a8
from llmkern.nn import Int8Linear, Int8WeightOnlyLinear
from llmkern.ops import int8 as ops

MINILM = ((384, 384), (384, 1536), (1536, 384))
LLAMA = ((2048, 2048), (2048, 5632), (5632, 2048), (4096, 4096))
MS_ALL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Default: every regime per shape without the slowest compute-bound calls (fp32/bf16 at large M on
# the big shapes take seconds each on 2 cores); --full times MS_ALL on every shape.
DEFAULT = (
    [(m, k, n) for k, n in MINILM for m in (1, 8, 32, 128, 512, 4096)]
    + [(m, k, n) for k, n in LLAMA for m in (1, 4, 8, 32, 256)]
    + [(512, 4096, 4096)]
)
QUICK = [(1, 2048, 2048), (8, 2048, 5632), (32, 4096, 4096), (128, 384, 1536), (512, 1536, 384)]
BASELINE = "fp32_linear"
ROTATE_MAX_M = 32
DECODE_MAX_M = 8  # the weight-only goals' range; int8pack and bf16 weight-only are timed up to it
WEIGHT_ONLY = (
    "int8_weight_only",
    "int8_weight_only_g128",
    "torch_int8pack",
    "int8_weight_only_bf16",
    "torch_int8pack_bf16",
)
GROUP = 128  # the grouped weight-only column (scales per 128 inputs, as GPTQ/AWQ checkpoints)


def implementations(linear: nn.Linear, x: torch.Tensor):
    """name -> (make one weight copy -> state, call(state) -> output)."""
    x_bf16 = x.bfloat16()
    x_q, x_scale = ops.quantize_per_token(x)

    def int_mm_state():
        w_q, w_scale = ops.quantize_weight(linear.weight.detach())
        return w_q.t(), w_scale, linear.bias.detach().clone()

    def int_mm(s):
        w_t, w_scale, bias = s
        return torch._int_mm(x_q, w_t).float() * x_scale[:, None] * w_scale + bias

    def kernel_state():
        w_q, w_scale = ops.quantize_weight(linear.weight.detach())
        return pack_w8a8(w_q), w_scale, linear.bias.detach().clone()

    def kernel(s):
        packed, w_scale, bias = s
        return torch.ops.llmkern_C.int8_w8a8_gemm(
            x_q, packed, x_scale, w_scale, bias, torch.float32
        )

    impls = {
        "fp32_linear": (lambda: _copy(linear), lambda m: m(x)),
        "bf16_linear": (lambda: _copy(linear).bfloat16(), lambda m: m(x_bf16)),
        "torch_int_mm": (int_mm_state, int_mm),
        "torch_dynamic": (lambda: torch_dynamic_int8(_copy(linear)), lambda m: m(x)),
        "int8_linear": (lambda: Int8Linear.from_float(linear), lambda m: m(x)),
        "int8_weight_only": (lambda: Int8WeightOnlyLinear.from_float(linear), lambda m: m(x)),
        "w8a8_kernel": (kernel_state, kernel),
    }
    if x.shape[0] > DECODE_MAX_M:
        return impls
    bf16 = lambda: _copy(linear).bfloat16()  # noqa: E731
    impls["int8_weight_only_g128"] = (
        lambda: Int8WeightOnlyLinear.from_float(linear, group_size=GROUP), lambda m: m(x)
    )  # fmt: skip
    impls["int8_weight_only_bf16"] = (
        lambda: Int8WeightOnlyLinear.from_float(bf16()), lambda m: m(x_bf16)
    )  # fmt: skip
    if B.has_int8pack_mm():
        impls["torch_int8pack"] = (lambda: TorchInt8PackLinear(linear), lambda m: m(x))
        impls["torch_int8pack_bf16"] = (lambda: TorchInt8PackLinear(bf16()), lambda m: m(x_bf16))
    return impls


def _copy(linear: nn.Linear) -> nn.Linear:
    out = nn.Linear(linear.in_features, linear.out_features).requires_grad_(False)
    out.load_state_dict(linear.state_dict())
    return out


def weight_bytes(name: str, k: int, n: int) -> int:
    if name == "int8_weight_only_g128":  # int8 weights and a float32 scale per group
        return k * n + 4 * n * -(-k // GROUP)
    per = {"fp32_linear": 4, "bf16_linear": 2}.get(name, 1)
    return per * k * n


def measure(make, call, copies: int, reps: int) -> tuple[float, float]:
    """(median ms rotating among `copies` weight states, peak MB of one call)."""
    states = [make() for _ in range(copies)]
    ms = time_fn(lambda i: call(states[i % copies]), warmup=2, reps=reps, min_time_s=0.3)
    return ms, peak_mb(lambda: call(states[0]), "cpu")


def bench_shape(m: int, k: int, n: int, read_gbs: float) -> list[Row]:
    torch.manual_seed(0)
    linear = nn.Linear(k, n).requires_grad_(False)
    x = torch.randn(m, k)
    flops = 2 * m * n * k
    # Few repetitions for the large shapes (a float32 call can take a second here).
    reps = max(3, min(20, int(2e10 // flops)))
    shape = {"M": m, "K": k, "N": n}
    rows = []
    with torch.inference_mode():
        for name, (make, call) in implementations(linear, x).items():
            copies = copies_to_exceed_cache(weight_bytes(name, k, n)) if m <= ROTATE_MAX_M else 1
            ms, mem = measure(make, call, copies, reps)
            extra = {"gops": round(flops / ms / 1e6, 1), "weight_copies": copies}
            if name in WEIGHT_ONLY:
                floor = B.floor_ms(weight_bytes(name, k, n), read_gbs)
                extra["read_floor_ms"] = round(floor, 4)
                extra["pct_read_bw"] = round(100 * floor / ms, 1)
            rows.append(Row("int8_gemm", shape, "float32", name, ms, mem, extra=extra))
    return with_speedups(rows, BASELINE)


def goals(rows: list[Row]) -> list[str]:
    """The issue's goals as measured ratios (>= 1 means met)."""
    by = {(r.shape["M"], r.shape["K"], r.shape["N"], r.impl): r for r in rows}
    checks = []
    for m, k, n in sorted({(r.shape["M"], r.shape["K"], r.shape["N"]) for r in rows}):
        t = {
            impl: r.median_ms for (mm, kk, nn_, impl), r in by.items() if (mm, kk, nn_) == (m, k, n)
        }
        found = [("Int8Linear/torch_dynamic >= 1.1", t["torch_dynamic"] / t["int8_linear"] / 1.1)]
        if m >= 32:
            found.append(("Int8Linear/fp32 >= 2.5", t["fp32_linear"] / t["int8_linear"] / 2.5))
        if m >= 512:
            found.append(("w8a8_kernel/_int_mm >= 0.9", t["torch_int_mm"] / t["w8a8_kernel"] / 0.9))
        if m == 1:
            found.append(("weight_only/fp32 >= 3", t["fp32_linear"] / t["int8_weight_only"] / 3))
        for suffix in ("", "_bf16") if m <= DECODE_MAX_M else ():
            ours, torchs = f"int8_weight_only{suffix}", f"torch_int8pack{suffix}"
            if torchs in t:
                found.append((f"{ours}/{torchs} >= 1.3", t[torchs] / t[ours] / 1.3))
            if ours in t:
                pct = by[(m, k, n, ours)].extra["pct_read_bw"]
                found.append((f"{ours} >= 80% read bandwidth", pct / 80))
        checks += [(f"M={m} K={k} N={n}", goal, ratio) for goal, ratio in found]
    return B.goal_lines(checks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few shapes only")
    size.add_argument("--full", action="store_true", help="every M of MS_ALL on every shape")
    ap.add_argument("--json", help="write result rows here")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--shapes", help="MxKxN list instead of the built-in set, e.g. 128x384x1536")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _ext.available():
        print(f"llmkern._C is not built: {_ext.load_error}", file=sys.stderr)
        return 1
    read_bw, copy_bw = B.read_bandwidth_gbs(), B.copy_bandwidth_gbs()
    print(B.header())
    print(f"read bandwidth {read_bw:.1f} GB/s (floor = int8 weight bytes / this), copy bandwidth "
          f"{copy_bw:.1f} GB/s (read + write)", flush=True)  # fmt: skip
    shapes = QUICK if args.quick else DEFAULT
    if args.full:
        shapes = [(m, k, n) for k, n in MINILM + LLAMA for m in MS_ALL]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows: list[Row] = []
    for m, k, n in shapes:
        new = bench_shape(m, k, n, read_bw)
        rows += new
        print(format_table(new), flush=True)
    print()
    print(format_table(rows))
    print()
    print(B.header())
    print("\n".join(goals(rows)))
    meta = {"read_bandwidth_gbs": round(read_bw, 2), "copy_bandwidth_gbs": round(copy_bw, 2)}
    write_json(rows, args.json, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
