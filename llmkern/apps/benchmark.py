"""Shared benchmark utilities (used by bench/bench_*.py and ``llmkern bench``).

Protocol (see README "Benchmarks"): implementations are compared side by side in one process and
one run and reported as ratios; each time is the median of many repetitions after warm-up; for
memory-bound shapes the weights are rotated among enough copies to exceed the last-level cache, so
DRAM rather than cache is measured. Every script writes JSON rows of the form

    {"op", "shape", "dtype", "impl", "median_ms", "peak_mem_mb", "baseline", "speedup_vs_baseline"}

and prints a table.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

LLC_FALLBACK_BYTES = 32 * 2**20  # where sysfs does not say (the AMD EPYC machines' L3)
# A VM can report its host's whole L3 (480 MB on the AMX machine) while sharing it: reads there ran
# at L3 speed up to 64 MB and at DRAM speed from 512 MB, so rotating 2 x 256 MB reaches DRAM.
LLC_CAP_BYTES = 256 * 2**20


def _sysfs_llc_bytes() -> int | None:
    """Size of cpu0's highest-level data/unified cache from sysfs, or None off Linux."""
    best: tuple[int, int] | None = None
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
        except (OSError, ValueError):
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if kind != "Instruction" and digits.isdigit() and (best is None or level > best[0]):
            best = (level, int(digits) * unit)
    return best[1] if best else None


def llc_bytes() -> int:
    """Last-level cache bytes the benchmarks rotate past: LLMKERN_LLC_MB, else sysfs (at most
    LLC_CAP_BYTES), else LLC_FALLBACK_BYTES."""
    mb = os.environ.get("LLMKERN_LLC_MB")
    if mb:
        return int(float(mb) * 2**20)
    return min(_sysfs_llc_bytes() or LLC_FALLBACK_BYTES, LLC_CAP_BYTES)


def copies_to_exceed_cache(nbytes: int, factor: float = 2.0) -> int:
    """How many copies of an ``nbytes`` working set rotate past the last-level cache."""
    return max(1, int(factor * llc_bytes() // max(nbytes, 1)) + 1)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(
    fn: Callable[[int], object],
    *,
    device: str = "cpu",
    warmup: int = 3,
    reps: int = 20,
    min_time_s: float = 0.2,
    max_reps: int = 1000,
) -> float:
    """Median milliseconds of ``fn(i)`` (i = repetition index, to rotate inputs).

    Runs at least ``reps`` timed calls and keeps going until ``min_time_s`` has elapsed (capped
    at ``max_reps``). On CUDA each call is timed with events."""
    for i in range(warmup):
        fn(i)
    _sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    i = 0
    while i < reps or (time.perf_counter() - start_all < min_time_s and i < max_reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(i)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return statistics.median(times)


def cuda_peak_mb(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated by ``fn()`` above what was allocated before it, in MB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cpu_peak_mb(fn: Callable[[], object]) -> float:
    """Peak CPU bytes allocated by torch during ``fn()`` above those live before it, in MB.

    Replays the profiler's raw allocation/free records in time order. (Summing the per-op
    ``cpu_memory_usage`` of function events would count an allocation once per enclosing op, and
    process RSS would also count allocator caching and page reuse.)"""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def peak_mb(fn: Callable[[], object], device: str) -> float:
    return cuda_peak_mb(fn) if device == "cuda" else cpu_peak_mb(fn)


def copy_bandwidth_gbs(nbytes: int = 256 * 2**20, reps: int = 5) -> float:
    """Measured DRAM copy bandwidth (read + write bytes per second)."""
    src = torch.empty(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    src.fill_(1)
    ms = time_fn(lambda i: dst.copy_(src), warmup=1, reps=reps, min_time_s=0.0)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def read_bandwidth_gbs(nbytes: int = 256 * 2**20, reps: int = 5, buffers: int = 3) -> float:
    """Measured DRAM read bandwidth (GB/s): one streaming pass on torch's threads over buffers of
    at least 4x the last-level cache (llmkern._C.stream_or; torch's own reductions ran 10-20%
    below it), the fastest of ``buffers`` of them: on 4 KB pages one allocation can read at
    19 GB/s and the next at 29 (on huge pages, see :func:`page_policy`, all read at 30-31). The
    floor of memory-bound work (decode, M <= 8) is its weight bytes / this."""
    from llmkern import _ext

    size = max(nbytes, 4 * llc_bytes())
    bufs = [torch.ones(size, dtype=torch.uint8) for _ in range(buffers)]  # all alive: new pages
    ms = min(
        time_fn(
            lambda i, b=b: _ext._C.stream_or(b.data_ptr(), size), warmup=1, reps=reps, min_time_s=0
        )
        for b in bufs
    )
    return size / (ms * 1e-3) / 1e9


def floor_ms(nbytes: int, bw_gbs: float) -> float:
    """Milliseconds to read ``nbytes`` at ``bw_gbs`` (the bandwidth floor of a memory-bound call)."""
    return nbytes / (bw_gbs * 1e9) * 1e3


def goal_lines(checks: Sequence[tuple[str, str, float]]) -> list[str]:
    """``(where, goal, ratio)`` -> one line each, ``ok`` when the measured ratio (goal margin) is
    >= 1, else ``MISS``."""
    return [
        f"{'ok  ' if ratio >= 1 else 'MISS'} {where:<28} {goal:<50} margin {ratio:.2f}"
        for where, goal, ratio in checks
    ]


# torch's own CPU alternatives, the baselines of the int8 rows (DESIGN.md "Measuring performance")


def torch_dynamic_int8(module: nn.Module) -> nn.Module:
    """``module`` with every nn.Linear swapped, in place, for torch.ao's dynamic int8 Linear
    (FBGEMM: int8 weights per tensor, activations quantised per call, fp32 in and out); a bare
    nn.Linear is left as it is and its quantised copy returned."""
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated, still the baseline
        warnings.simplefilter("ignore")
        quantize = torch.ao.quantization.quantize_dynamic
        if type(module) is nn.Linear:
            return quantize(nn.Sequential(module), {nn.Linear}, torch.qint8, inplace=True)[0]
        return quantize(module, {nn.Linear}, torch.qint8, inplace=True)


def has_int8pack_mm() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class TorchInt8PackLinear(nn.Module):
    """Int8 weight-only linear on ``torch._weight_int8pack_mm``, torch's CPU kernel that
    torchao and gpt-fast use: the same per-output-channel int8 weight as llmkern's
    (``quantize_weight``). The op wants its scales in the activations' dtype: they are kept in
    the linear's dtype (and follow ``module.to(dtype)``)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        from llmkern.ops.int8 import quantize_weight

        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        w_q, scale = quantize_weight(w.float())
        self.register_buffer("weight_int8", w_q)
        self.register_buffer("scales", scale.to(w.dtype))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        out = torch._weight_int8pack_mm(x2, self.weight_int8, self.scales.to(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


@dataclass
class Row:
    op: str
    shape: dict
    dtype: str
    impl: str
    median_ms: float
    peak_mem_mb: float | None = None
    baseline: str = ""
    speedup_vs_baseline: float = 1.0
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d


def with_speedups(rows: Sequence[Row], baseline: str, same_dtype: bool = True) -> list[Row]:
    """Fill ``baseline``/``speedup_vs_baseline`` of each row from the row of impl ``baseline``
    with the same op, shape and (if ``same_dtype``) dtype (baseline time / row time)."""

    def key(r: Row) -> tuple:
        return (r.op, json.dumps(r.shape, sort_keys=True), r.dtype if same_dtype else None)

    base = {key(r): r.median_ms for r in rows if r.impl == baseline}
    for r in rows:
        ref = base.get(key(r))
        if ref is not None:
            r.baseline = baseline
            r.speedup_vs_baseline = round(ref / r.median_ms, 3) if r.median_ms > 0 else float("nan")
    return list(rows)


def format_table(rows: Sequence[Row]) -> str:
    head = ["op", "shape", "dtype", "impl", "median_ms", "peak_MB", "vs", "speedup"]
    body = []
    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r.shape.items())
        mem = "" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}"
        body.append([r.op, shape, r.dtype, r.impl, f"{r.median_ms:.3f}", mem, r.baseline,
                     f"{r.speedup_vs_baseline:.2f}x"])  # fmt: skip
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: str | None, meta: dict | None = None) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"meta": {**environment(), **(meta or {})}, "rows": [r.as_json() for r in rows]}
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


def environment() -> dict:
    from llmkern import backends

    return {
        "torch": torch.__version__,
        "triton": backends.triton_version(),
        "cpu_model": backends.cpu_model(),
        "cpu_isa": backends.cpu_isa(),
        "threads": torch.get_num_threads(),
        "pages": page_policy(),
        "gpu": backends.gpu_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def page_policy() -> str:
    """How torch backs this process' large CPU buffers, weights and bandwidth probe alike. On the
    Intel VMs (THP "madvise"), a 1 GB buffer on 4 KB pages streamed at 19-29 GB/s depending on
    the allocation and on huge pages at 30-31 GB/s, so the bench scripts set torch's own option
    THP_MEM_ALLOC_ENABLE=1 (huge pages for buffers of 2 MB and more; torch reads it at its first
    allocation, so the scripts set it before importing torch) unless the caller set it."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown (no transparent huge pages)"
    if mode == "always":
        return "huge (THP always)"
    if mode == "madvise" and os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":
        return "huge (THP_MEM_ALLOC_ENABLE=1)"
    return f"4 KB (THP {mode})"


def header() -> str:
    """The line every benchmark prints first: its figures hold for this CPU and ISA path only."""
    from llmkern import backends

    return (
        f"cpu {backends.cpu_model()}, isa {backends.cpu_isa()}, threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}, pages {page_policy()}"
    )


def bench_dir() -> str:
    """The repository's bench/ folder (benchmarks run from a source checkout)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # llmkern/
    path = os.path.join(os.path.dirname(package), "bench")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"bench/ not found next to the llmkern package ({path}); run from a source checkout "
            "installed with `pip install --no-build-isolation -e .`"
        )
    return path


def run_bench_scripts(ops: list[str] | None, out_dir: str, plot: bool, quick: bool) -> int:
    """Run bench/bench_<op>.py for each op (all when None), each writing <out_dir>/<op>.json."""
    folder = bench_dir()
    available = sorted(
        f[6:-3] for f in os.listdir(folder) if f.startswith("bench_") and f.endswith(".py")
    )
    if not available:
        raise FileNotFoundError(f"no bench_*.py scripts in {folder}")
    chosen = ops or available
    unknown = [o for o in chosen if o not in available]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {available}")
    status = 0
    for op in chosen:
        out = os.path.join(out_dir, f"{op}.json")
        cmd = [sys.executable, os.path.join(folder, f"bench_{op}.py"), "--json", out]
        cmd += ["--quick"] if quick else []
        print(f"$ {' '.join(cmd)}", flush=True)
        status |= subprocess.call(cmd)
        if plot and os.path.exists(out):
            plot_json(out, out[:-5] + ".png")
    return status


def plot_json(path: str, png: str) -> None:
    """Bar chart of speedup_vs_baseline per impl and shape from a results JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        rows = json.load(f)["rows"]
    rows = [r for r in rows if r["impl"] != r["baseline"]]
    if not rows:
        return
    labels = [
        f"{r['impl']} {','.join(str(v) for v in r['shape'].values())} {r['dtype']}" for r in rows
    ]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(rows))))
    ax.barh(range(len(rows)), [r["speedup_vs_baseline"] for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel(f"speedup vs {rows[0]['baseline']}")
    ax.set_title(os.path.basename(path))
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"wrote {png}")
