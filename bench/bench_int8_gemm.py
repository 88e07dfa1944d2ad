"""INT8 GEMM on CPU: llmkern's int8 layers and kernels against torch's float and int8 paths.

Side by side, per shape (M tokens, K inputs, N outputs), in one process:

  fp32_linear      nn.Linear, float32 (the baseline of speedup_vs_baseline)
  bf16_linear      nn.Linear, bfloat16 weights and inputs
  torch_int_mm     torch._int_mm on int8 x_q and W, then the x_scale * w_scale + bias ops
  torch_dynamic    torch.ao dynamic quantized Linear (FBGEMM/oneDNN; quantises x itself)
  int8_linear      llmkern.nn.Int8Linear, end to end (activation quantisation included)
  int8_weight_only llmkern.nn.Int8WeightOnlyLinear (per-channel scales)
  w8a8_kernel      llmkern's W8A8 kernel alone on int8 x_q (pre-packed weight, fused epilogue)

For M <= 32 every implementation rotates among enough copies of its weights to exceed the
last-level cache, so DRAM is measured; the DRAM floor of a weight-only layer (int8 weight bytes /
measured copy bandwidth) is printed with it. After the table, the goals of the int8 issue are
checked as ratios measured in this run.

    flock /tmp/llmkern_bench.lock python bench/bench_int8_gemm.py [--quick] [--json PATH]
        [--threads N] [--shapes 4096x1536x384,...]

On a machine shared with other jobs, torch's multi-threaded baselines lose whole scheduler time
slices at their thread barriers (times in multiples of 4 ms); compare with --threads 1 there.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch
from torch import nn

from llmkern import _ext
from llmkern.benchmark import (
    Row,
    copies_to_exceed_cache,
    copy_bandwidth_gbs,
    format_table,
    peak_mb,
    time_fn,
    with_speedups,
    write_json,
)
from llmkern.cpu.int8 import pack_w8a8
from llmkern.nn import Int8Linear, Int8WeightOnlyLinear
from llmkern.ops import int8 as ops

MS = (1, 8, 32, 128, 512, 2048)
KNS = ((4096, 4096), (4096, 11008), (11008, 4096), (768, 3072), (3072, 768))
QUICK = [(1, 4096, 4096), (32, 4096, 4096), (512, 4096, 4096), (8, 768, 3072), (128, 3072, 768)]
BASELINE = "fp32_linear"
ROTATE_MAX_M = 32


def torch_dynamic(linear: nn.Linear) -> nn.Module:
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated, still the baseline
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8
        )[0]


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
            x_q, x_scale, w_scale, bias, packed, torch.float32
        )

    return {
        "fp32_linear": (lambda: _copy(linear), lambda m: m(x)),
        "bf16_linear": (lambda: _copy(linear).bfloat16(), lambda m: m(x_bf16)),
        "torch_int_mm": (int_mm_state, int_mm),
        "torch_dynamic": (lambda: torch_dynamic(_copy(linear)), lambda m: m(x)),
        "int8_linear": (lambda: Int8Linear.from_float(linear), lambda m: m(x)),
        "int8_weight_only": (lambda: Int8WeightOnlyLinear.from_float(linear), lambda m: m(x)),
        "w8a8_kernel": (kernel_state, kernel),
    }


def _copy(linear: nn.Linear) -> nn.Linear:
    out = nn.Linear(linear.in_features, linear.out_features).requires_grad_(False)
    out.load_state_dict(linear.state_dict())
    return out


def weight_bytes(name: str, k: int, n: int) -> int:
    per = {"fp32_linear": 4, "bf16_linear": 2}.get(name, 1)
    return per * k * n


def measure(make, call, copies: int, reps: int) -> tuple[float, float]:
    """(median ms rotating among `copies` weight states, peak MB of one call)."""
    states = [make() for _ in range(copies)]
    ms = time_fn(lambda i: call(states[i % copies]), warmup=2, reps=reps, min_time_s=0.3)
    return ms, peak_mb(lambda: call(states[0]), "cpu")


def bench_shape(m: int, k: int, n: int, bw_gbs: float) -> list[Row]:
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
            if name == "int8_weight_only":
                extra["dram_floor_ms"] = round(k * n / (bw_gbs * 1e9) * 1e3, 4)
            rows.append(Row("int8_gemm", shape, "float32", name, ms, mem, extra=extra))
    return with_speedups(rows, BASELINE)


def goals(rows: list[Row]) -> list[str]:
    """The issue's goals as measured ratios (>= 1 means met)."""
    by = {(r.shape["M"], r.shape["K"], r.shape["N"], r.impl): r for r in rows}
    lines = []
    for m, k, n in sorted({(r.shape["M"], r.shape["K"], r.shape["N"]) for r in rows}):
        t = {
            impl: by[(m, k, n, impl)].median_ms
            for (mm, kk, nn_, impl) in by
            if (mm, kk, nn_) == (m, k, n)
        }
        checks = [("Int8Linear/torch_dynamic >= 1.1", t["torch_dynamic"] / t["int8_linear"] / 1.1)]
        if m >= 32:
            checks.append(("Int8Linear/fp32 >= 2.5", t["fp32_linear"] / t["int8_linear"] / 2.5))
        if m >= 512:
            checks.append(
                ("w8a8_kernel/_int_mm >= 0.9", t["torch_int_mm"] / t["w8a8_kernel"] / 0.9)
            )
        if m == 1:
            floor = by[(m, k, n, "int8_weight_only")].extra["dram_floor_ms"]
            checks.append(("weight_only/fp32 >= 3", t["fp32_linear"] / t["int8_weight_only"] / 3))
            checks.append(
                ("weight_only within 1.3x DRAM floor", 1.3 * floor / t["int8_weight_only"])
            )
        for label, ratio in checks:
            mark = "ok  " if ratio >= 1 else "MISS"
            lines.append(f"{mark} M={m:<5} K={k:<6} N={n:<6} {label:<36} margin {ratio:.2f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--json", help="write result rows here")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--shapes", help="MxKxN list instead of the built-in set, e.g. 128x384x1536")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _ext.available():
        print(f"llmkern._C is not built: {_ext.load_error}", file=sys.stderr)
        return 1
    bw = copy_bandwidth_gbs()
    print(f"threads {torch.get_num_threads()}, cpu isa {_ext._C.active_isa()}, copy bandwidth "
          f"{bw:.1f} GB/s (read + write; DRAM floor = int8 weight bytes / this)", flush=True)  # fmt: skip
    shapes = QUICK if args.quick else [(m, k, n) for (k, n) in KNS for m in MS]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows: list[Row] = []
    for m, k, n in shapes:
        new = bench_shape(m, k, n, bw)
        rows += new
        print(format_table(new), flush=True)
    print()
    print(format_table(rows))
    print()
    print("\n".join(goals(rows)))
    write_json(rows, args.json, {"copy_bandwidth_gbs": round(bw, 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
