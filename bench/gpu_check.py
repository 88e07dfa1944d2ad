#!/usr/bin/env python
"""One-command GPU verification of llmkern (run it from the repository root on a CUDA machine):

    python bench/gpu_check.py [--json gpu_check.json] [--quick] [--time-budget 480]
    python bench/gpu_check.py --dry-run          # list what it would run (works without a GPU)

Steps, each with its own time limit so the whole run fits the budget (~8 minutes on an H100/H200):

1. environment: GPU name, driver (nvidia-smi), CUDA, torch, triton and nvcc versions;
2. build: ``python setup.py build_ext --inplace`` with CUDA, for this GPU's architecture only,
   unless ``llmkern._C`` is already built with CUDA (or ``--skip-build``);
3. tests: ``pytest -m gpu`` (every Triton and CUDA kernel against the reference on the GPU),
   with a JUnit report;
4. benchmarks of the three kernel families on the GPU, each in its own process, each output
   checked against its baseline's output before it is timed: INT8 (W8A8 vs ``torch._int_mm`` +
   epilogue at 4096^3 and 8192^3, the quantise+GEMM linear path, weight-only M=1 vs bf16
   ``F.linear``), 2:4 (vs dense bf16 and ``to_sparse_semi_structured`` at M=1 and M=2048),
   KD (fused-linear KD at N=8192, H=4096, V=128256 bf16 vs the naive PyTorch loss and Liger
   when installed; the logits KD loss vs naive).

The summary table (kernel, correctness, speedup vs baseline, peak memory) is printed last; all
results go to ``--json``. The exit status is 1 on any failed test, mismatch, failed build or
step that ran out of time, 2 when no CUDA device is present (use ``--dry-run`` there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("int8", "sparse24", "kd")

# What each benchmark family measures: (op, shape, baseline), shapes as in the issue. --quick
# keeps the first shape of each op (for a smoke run; the numbers to report are the full ones).
BENCH_CASES = {
    "int8": [
        ("w8a8_matmul", {"m": 4096, "n": 4096, "k": 4096}, "torch._int_mm+epilogue"),
        ("w8a8_matmul", {"m": 8192, "n": 8192, "k": 8192}, "torch._int_mm+epilogue"),
        ("w8a8_linear", {"m": 4096, "n": 4096, "k": 4096}, "quantize+torch._int_mm+epilogue"),
        ("w8_matmul", {"m": 1, "n": 4096, "k": 4096}, "F.linear bf16"),
        ("w8_matmul", {"m": 1, "n": 8192, "k": 8192}, "F.linear bf16"),
    ],
    "sparse24": [
        ("sparse24_matmul", {"m": 1, "n": 4096, "k": 4096}, "F.linear bf16"),
        ("sparse24_matmul", {"m": 2048, "n": 4096, "k": 4096}, "F.linear bf16"),
        ("sparse24_matmul", {"m": 1, "n": 8192, "k": 8192}, "F.linear bf16"),
        ("sparse24_matmul", {"m": 2048, "n": 8192, "k": 8192}, "F.linear bf16"),
    ],
    "kd": [
        ("fused_linear_kd_loss", {"n": 8192, "h": 4096, "v": 128256}, "naive"),
        ("kd_loss", {"n": 8192, "v": 128256}, "naive"),
    ],
}
QUICK_SHAPES = {
    "fused_linear_kd_loss": {"n": 2048, "h": 4096, "v": 128256},
    "kd_loss": {"n": 2048, "v": 128256},
}


# ---------------------------------------------------------------------------------------------
# Orchestration (no GPU needed: imports, arguments, the plan)
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list the steps and exit")
    p.add_argument("--json", metavar="PATH", default="gpu_check.json", help="full results")
    p.add_argument("--skip-build", action="store_true", help="use llmkern._C as it is")
    p.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    p.add_argument("--skip-bench", action="store_true", help="tests only")
    p.add_argument("--quick", action="store_true", help="smaller benchmark shapes (smoke run)")
    p.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"benchmark families, comma-separated (default: {','.join(FAMILIES)})",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=480.0,
        metavar="SECONDS",
        help="wall-clock budget for the whole run (default 480)",
    )
    p.add_argument("--run-bench", choices=FAMILIES, help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args(argv)
    fams = [f for f in args.families.split(",") if f]
    bad = [f for f in fams if f not in FAMILIES]
    if bad or not fams:
        p.error(f"--families: unknown {bad or 'empty list'}; choose from {','.join(FAMILIES)}")
    if not 60 <= args.time_budget <= 7200:
        p.error(f"--time-budget must be between 60 and 7200 seconds, got {args.time_budget:g}")
    args.families = fams
    return args


def cases(family: str, quick: bool):
    seen = set()
    for op, shape, baseline in BENCH_CASES[family]:
        if quick:
            if op in seen:
                continue
            seen.add(op)
            shape = QUICK_SHAPES.get(op, shape)
        yield op, shape, baseline


def build_command():
    return [sys.executable, "setup.py", "build_ext", "--inplace"]


def test_command(junit: str):
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
            "--junitxml", junit, "tests"]  # fmt: skip


def bench_command(family: str, out: str, quick: bool):
    cmd = [sys.executable, os.path.abspath(__file__), "--run-bench", family, "--json", out]
    return cmd + (["--quick"] if quick else [])


def plan(args) -> list[dict]:
    """The steps in order, each with its share of the time budget."""
    budget = args.time_budget
    steps = [{"name": "environment", "what": "GPU name, driver, CUDA, torch, triton, nvcc"}]
    if not args.skip_build:
        steps.append({"name": "build", "cmd": build_command(), "limit": 0.45 * budget,
                      "what": "only if llmkern._C lacks CUDA; TORCH_CUDA_ARCH_LIST = this GPU"})  # fmt: skip
    if not args.skip_tests:
        steps.append({"name": "tests", "cmd": test_command("<tmp>/gpu_tests.xml"),
                      "limit": 0.35 * budget, "env": {"LLMKERN_TEST_GPU": "1"},
                      "what": "every Triton and CUDA kernel against the reference on the GPU"})  # fmt: skip
    if not args.skip_bench:
        for fam in args.families:
            listing = [f"{op} {_shape(s)} vs {b}" for op, s, b in cases(fam, args.quick)]
            steps.append({"name": f"bench:{fam}", "limit": None, "what": "; ".join(listing),
                          "cmd": bench_command(fam, f"<tmp>/bench_{fam}.json", args.quick)})  # fmt: skip
    return steps


def _shape(shape: dict) -> str:
    return "(" + ",".join(f"{k}={v}" for k, v in shape.items()) + ")"


def print_plan(steps) -> None:
    print("gpu_check plan:")
    for i, s in enumerate(steps, 1):
        limit = f" [<= {s['limit']:.0f}s]" if s.get("limit") else ""
        print(f"{i}. {s['name']}{limit}: {s['what']}")
        if "cmd" in s:
            env = " ".join(f"{k}={v}" for k, v in s.get("env", {}).items())
            print(f"   $ {env + ' ' if env else ''}{' '.join(s['cmd'])}")


def run(cmd, timeout, env=None, log=None):
    """(returncode or None on timeout, seconds, output tail)."""
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        out, rc = raw.decode(errors="replace") if isinstance(raw, bytes) else raw, None
    if log:
        with open(log, "w") as f:
            f.write(out)
    return rc, time.time() - t0, out[-4000:]


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:  # absent or broken: recorded, the triton tests will say more
        env["triton"] = f"unavailable ({exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gb=round(props.total_memory / 2**30, 1))  # fmt: skip
    smi = shutil.which("nvidia-smi")
    if smi:
        q = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        env["nvidia_smi"] = subprocess.run(q, capture_output=True, text=True).stdout.strip()
        env["driver"] = env["nvidia_smi"].split(",")[1].strip() if "," in env["nvidia_smi"] else ""
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if "CUDA_HOME" in os.environ else None
    )
    if nvcc and os.path.exists(nvcc):
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        env["nvcc"] = out.strip().splitlines()[-1] if out.strip() else ""
    return env


def extension_has_cuda() -> bool:
    code = "from llmkern import _ext; print(_ext.available() and _ext._C.built_with_cuda())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip().endswith("True")


def junit_summary(path: str) -> dict:
    """Per test file: tests, failed (failures + errors), skipped; plus the failing test ids."""
    files: dict[str, dict] = {}
    failing = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("classname", "").split(".")[-1] or "?"
        entry = files.setdefault(name, {"tests": 0, "failed": 0, "skipped": 0})
        entry["tests"] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            entry["failed"] += 1
            failing.append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("skipped") is not None:
            entry["skipped"] += 1
    return {"files": files, "failing": failing}


def family_of(name: str) -> str:
    for fam in ("sparse24", "int8", "kd", "triton", "cuda"):
        if fam in name:
            return fam
    return "other"


def summary_table(results: dict) -> str:
    lines = [("kernel", "correctness", "speedup vs baseline", "peak memory")]
    for name, t in sorted(results.get("tests", {}).get("files", {}).items()):
        ran = t["tests"] - t["skipped"]
        status = "FAIL " + f"{t['failed']}/{ran}" if t["failed"] else f"ok {ran}/{t['tests']}"
        lines.append((f"tests {name}", status, "", ""))
    for row in results.get("rows", []):
        if row["impl"] == row.get("baseline"):
            continue
        mem = "" if row.get("peak_mem_mb") is None else f"{row['peak_mem_mb']:.0f} MB"
        base_mem = row.get("extra", {}).get("baseline_peak_mem_mb")
        if base_mem is not None:
            mem += f" (baseline {base_mem:.0f} MB)"
        lines.append((f"{row['op']}[{row['impl']}] {_shape(row['shape'])}",
                      row.get("extra", {}).get("check", "?"),
                      f"{row['speedup_vs_baseline']:.2f}x vs {row['baseline']}", mem))  # fmt: skip
    for step in results.get("steps", []):
        if step["status"] not in ("ok", "skipped"):
            lines.append((f"step {step['name']}", step["status"].upper(), "", ""))
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_bench:
        return bench_worker(args.run_bench, args.json, args.quick)
    steps = plan(args)
    if args.dry_run:
        print_plan(steps)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; `--dry-run` lists the steps", file=sys.stderr)
        return 2
    t_start = time.time()
    deadline = t_start + args.time_budget
    tmp = os.path.join(ROOT, "build", "gpu_check")
    os.makedirs(tmp, exist_ok=True)
    results = {"meta": environment(), "steps": [], "rows": [], "mismatches": []}
    print(json.dumps(results["meta"], indent=1), flush=True)

    def record(name, status, seconds, detail=""):
        results["steps"].append({"name": name, "status": status, "seconds": round(seconds, 1),
                                 "detail": detail})  # fmt: skip
        print(f"--- {name}: {status} ({seconds:.0f}s)", flush=True)

    for step in steps[1:]:
        left = deadline - time.time()
        if step["name"] == "build":
            if extension_has_cuda():
                record("build", "skipped", 0, "llmkern._C already built with CUDA")
                continue
            major, minor = torch.cuda.get_device_capability(0)
            env = {"TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST",
                                                          f"{major}.{minor}"),
                   "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 4))}  # fmt: skip
            rc, sec, tail = run(step["cmd"], min(step["limit"], left), env,
                                os.path.join(tmp, "build.log"))  # fmt: skip
            ok = rc == 0 and extension_has_cuda()
            record("build", "ok" if ok else ("timeout" if rc is None else "failed"), sec,
                   "" if ok else tail)  # fmt: skip
            if not ok:
                print(tail)
                break
        elif step["name"] == "tests":
            junit = os.path.join(tmp, "gpu_tests.xml")
            if os.path.exists(junit):
                os.remove(junit)
            rc, sec, tail = run(test_command(junit), min(step["limit"], left), step["env"],
                                os.path.join(tmp, "tests.log"))  # fmt: skip
            print(tail[-2500:])
            if os.path.exists(junit):
                results["tests"] = junit_summary(junit)
            status = {0: "ok", 5: "no tests"}.get(rc, "timeout" if rc is None else "failed")
            record("tests", status, sec)
        else:
            fam = step["name"].split(":")[1]
            out = os.path.join(tmp, f"bench_{fam}.json")
            if os.path.exists(out):
                os.remove(out)
            n_left = sum(1 for s in steps if s["name"].startswith("bench:")) - sum(
                1 for s in results["steps"] if s["name"].startswith("bench:")
            )
            limit = max(30.0, left / max(1, n_left))
            rc, sec, tail = run(bench_command(fam, out, args.quick), limit)
            print(tail[-3000:])
            if os.path.exists(out):
                with open(out) as f:
                    data = json.load(f)
                results["rows"] += data["rows"]
                results["mismatches"] += data["mismatches"]
            status = "ok" if rc == 0 else ("timeout" if rc is None else "failed")
            record(step["name"], status, sec)
    failed = [s for s in results["steps"] if s["status"] not in ("ok", "skipped")]
    results["ok"] = not failed and not results["mismatches"]
    results["seconds"] = round(time.time() - t_start, 1)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nfull results: {args.json} ({results['seconds']:.0f}s)")
    for m in results["mismatches"]:
        print(f"MISMATCH: {m}")
    print("\n" + summary_table(results))
    print("\ngpu_check: " + ("PASS" if results["ok"] else "FAIL"))
    return 0 if results["ok"] else 1


# ---------------------------------------------------------------------------------------------
# Benchmark workers (run in their own process on the GPU)
# ---------------------------------------------------------------------------------------------


def bench_worker(family: str, out: str, quick: bool) -> int:
    import torch

    from llmkern import benchmark

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    rows, mismatches = [], []
    fn = {"int8": bench_int8, "sparse24": bench_sparse24, "kd": bench_kd}[family]
    for op, shape, baseline in cases(family, quick):
        try:
            new_rows, bad = fn(op, shape, baseline)
        except torch.cuda.OutOfMemoryError as exc:
            new_rows, bad = [], [f"{op} {_shape(shape)}: out of memory ({exc})"]
        rows += benchmark.with_speedups(new_rows, baseline)
        mismatches += bad
        torch.cuda.empty_cache()
        with open(out, "w") as f:  # written after each case: a timeout keeps what finished
            json.dump({"rows": [r.as_json() for r in rows], "mismatches": mismatches}, f)
    print(benchmark.format_table(rows))
    return 1 if mismatches else 0


def _gpu_impls(op):
    from llmkern import backends

    return [b for b in ("cuda", "triton") if b in backends.kernels(op)
            and backends.backend_available(b, "cuda")[0]]  # fmt: skip


def _time(fn, rotate=1):
    from llmkern import benchmark

    return benchmark.time_fn(lambda i: fn(i % rotate), device="cuda", warmup=3, reps=10,
                             min_time_s=0.1, max_reps=200)  # fmt: skip


def _check(got, want, rtol, what):
    """'ok' or a mismatch message: max |got - want| relative to max |want|."""
    import torch

    got, want = got.float(), want.float()
    if got.shape != want.shape:
        return f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not torch.isfinite(got).all():
        return f"{what}: non-finite output"
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
    return "ok" if err <= rtol else f"{what}: max relative error {err:.3g} > {rtol:g}"


def _measure(op, shape, dtype, impls, baseline, rotate=1):
    """impls: name -> (fn(i), check message). Rows for each; mismatching impls are not timed."""
    from llmkern import benchmark

    rows, bad = [], []
    for name, (fn, check) in impls.items():
        if check != "ok":
            bad.append(f"{op}[{name}] {_shape(shape)}: {check}")
            continue
        ms = _time(fn, rotate)
        peak = benchmark.cuda_peak_mb(lambda fn=fn: fn(0))
        extra = {"check": check} if name != baseline else {}
        rows.append(benchmark.Row(op, shape, dtype, name, round(ms, 4), round(peak, 1),
                                  extra=extra))  # fmt: skip
    return rows, bad


def _copies(nbytes):
    """Weight copies to rotate so that a memory-bound kernel reads HBM, not L2 (<= 128 MB)."""
    return max(2, int(2 * 128 * 2**20 // max(nbytes, 1)) + 1)


def bench_int8(op, shape, baseline):
    import torch
    import torch.nn.functional as F

    import llmkern
    from llmkern.ops import int8 as int8_ops

    m, n, k = shape["m"], shape["n"], shape["k"]
    dev, bf16 = "cuda", torch.bfloat16
    impls = {}
    if op in ("w8a8_matmul", "w8a8_linear"):
        wq = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev)
        ws = torch.rand(n, device=dev) / 127 + 1e-4
        bias = torch.randn(n, device=dev, dtype=bf16)
        x = torch.randn(m, k, device=dev, dtype=bf16)
        xq, xs = int8_ops.quantize_per_token_ref(x)

        def epilogue(acc, sx):
            return (acc.float() * sx[:, None] * ws[None, :] + bias.float()).to(bf16)

        if op == "w8a8_matmul":
            base = lambda i: epilogue(torch._int_mm(xq, wq.t()), xs)
            want = base(0)
            for b in _gpu_impls(op):
                f = lambda i, b=b: llmkern.w8a8_matmul(xq, wq, xs, ws, bias, bf16, backend=b)
                impls[b] = (f, _check(f(0), want, 2**-7, op))
        else:

            def base(i):
                q, s = int8_ops.quantize_per_token_ref(x)
                return epilogue(torch._int_mm(q, wq.t()), s)

            want = base(0)
            for b in _gpu_impls(op):
                f = lambda i, b=b: int8_ops.w8a8_linear(x, wq, ws, bias, backend=b)
                impls[b] = (f, _check(f(0), want, 2**-6, op))
        impls[baseline] = (base, "ok")
        return _measure(op, shape, "int8", impls, baseline)
    # weight-only: M=1 decode, memory-bound: rotate weight copies past L2
    copies = _copies(n * k * 2)
    wqs = [torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev) for _ in range(copies)]
    wss = [torch.rand(n, device=dev) / 127 + 1e-4 for _ in range(copies)]
    dense = [(w.float() * s[:, None]).to(bf16) for w, s in zip(wqs, wss, strict=True)]
    x = torch.randn(m, k, device=dev, dtype=bf16)
    impls[baseline] = (lambda i: F.linear(x, dense[i]), "ok")
    want = F.linear(x.float(), dense[0].float())
    for b in _gpu_impls(op):
        f = lambda i, b=b: llmkern.w8_matmul(x, wqs[i], wss[i], backend=b)
        impls[b] = (f, _check(f(0), want, 2**-6, op))
    return _measure(op, shape, "bf16", impls, baseline, rotate=copies)


def bench_sparse24(op, shape, baseline):
    import torch
    import torch.nn.functional as F

    import llmkern

    m, n, k = shape["m"], shape["n"], shape["k"]
    dev, bf16 = "cuda", torch.bfloat16
    copies = _copies(n * k * 2) if m == 1 else 1
    ws = [llmkern.prune_24(torch.randn(n, k, device=dev, dtype=bf16)) for _ in range(copies)]
    comp = [llmkern.compress_24(w, backend="reference") for w in ws]
    x = torch.randn(m, k, device=dev, dtype=bf16)
    want = F.linear(x.float(), ws[0].float())
    impls = {baseline: (lambda i: F.linear(x, ws[i]), "ok")}
    try:
        from torch.sparse import to_sparse_semi_structured

        semi = [to_sparse_semi_structured(w) for w in ws]
        f = lambda i: F.linear(x, semi[i])
        impls["to_sparse_semi_structured"] = (f, _check(f(0), want, 2**-6, op))
    except Exception as exc:  # not supported for this shape/GPU/build: say so, carry on
        print(f"to_sparse_semi_structured unavailable for {_shape(shape)}: {exc}")
    for b in _gpu_impls(op):
        f = lambda i, b=b: llmkern.sparse24_matmul(x, *comp[i], backend=b)
        impls[b] = (f, _check(f(0), want, 2**-6, op))
    return _measure(op, shape, "bf16", impls, baseline, rotate=copies)


def _naive_kd(zs, zt, labels, tau=2.0, alpha=0.5):
    import torch.nn.functional as F

    logq = F.log_softmax(zs.float() / tau, dim=-1)
    logp = F.log_softmax(zt.float() / tau, dim=-1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    valid = labels != -100
    ce = F.cross_entropy(zs.float(), labels, reduction="none")
    rows = alpha * tau * tau * kl + (1 - alpha) * ce
    return (rows * valid).sum() / valid.sum().clamp(min=1)


def bench_kd(op, shape, baseline):
    import torch

    import llmkern
    from llmkern import benchmark

    dev, bf16 = "cuda", torch.bfloat16
    n, v = shape["n"], shape["v"]
    labels = torch.randint(0, v, (n,), device=dev)
    labels[::7] = -100
    rows, bad = [], []
    if op == "kd_loss":
        zs = (torch.randn(n, v, device=dev) * 4).to(bf16).requires_grad_()
        zt = (torch.randn(n, v, device=dev) * 4).to(bf16)
        runs = {baseline: lambda: _naive_kd(zs, zt, labels)}
        for b in _gpu_impls("kd_loss_rows"):
            runs[b] = lambda b=b: llmkern.kd_loss(zs, zt, labels, 2.0, 0.5, backend=b)
        grads = {}
        for name, f in runs.items():
            zs.grad = None
            loss = f()
            loss.backward()
            grads[name] = (loss.detach(), zs.grad.clone())
        params = [zs]
    else:
        h = shape["h"]
        hs = (torch.randn(n, h, device=dev) / 2).to(bf16).requires_grad_()
        w_s = (torch.randn(v, h, device=dev) / h**0.5).to(bf16).requires_grad_()
        ht = (torch.randn(n, h, device=dev) / 2).to(bf16)
        w_t = (torch.randn(v, h, device=dev) / h**0.5).to(bf16)
        runs = {baseline: lambda: _naive_kd(hs @ w_s.T, ht @ w_t.T, labels)}
        runs["llmkern"] = lambda: llmkern.fused_linear_kd_loss(hs, w_s, ht, w_t, labels, 2.0, 0.5)
        try:  # Liger's fused-linear distillation loss, when installed (JSD, so timing only)
            from liger_kernel.transformers import LigerFusedLinearJSD

            liger = LigerFusedLinearJSD(jsd_beta=0.5, temperature=2.0)
            runs["liger_jsd"] = lambda: liger(hs, w_s, ht, w_t, labels)
        except Exception as exc:
            print(f"Liger not available: {exc}")
        grads = {}
        for name, f in runs.items():
            hs.grad = w_s.grad = None
            loss = f()
            loss.backward()
            grads[name] = (loss.detach(), hs.grad.clone(), w_s.grad.clone())
            hs.grad = w_s.grad = None
        params = [hs, w_s]
    want = grads[baseline]
    for name, f in runs.items():
        check = "ok"
        if name not in (baseline, "liger_jsd"):
            for got_t, want_t, what in zip(
                grads[name], want, ("loss", "grad", "grad_head")[: len(want)], strict=True
            ):
                check = _check(got_t, want_t, 2e-2, f"{op}[{name}] {what}")
                if check != "ok":
                    bad.append(check)
                    break
        if check != "ok":
            continue

        def step(i, f=f):
            for p in params:
                p.grad = None
            f().backward()

        ms = _time(step)
        peak = benchmark.cuda_peak_mb(lambda step=step: step(0))
        extra = {"check": check} if name != baseline else {}
        rows.append(benchmark.Row(op, shape, "bf16", name, round(ms, 3), round(peak, 1),
                                  extra=extra))  # fmt: skip
    base_mem = next((r.peak_mem_mb for r in rows if r.impl == baseline), None)
    for r in rows:
        if r.impl != baseline and base_mem is not None:
            r.extra["baseline_peak_mem_mb"] = base_mem
    return rows, bad


if __name__ == "__main__":
    sys.exit(main())
