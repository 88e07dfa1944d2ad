#!/usr/bin/env python
"""One-command GPU verification of llmkern (run it from the repository root on a CUDA machine):

    python bench/gpu_check.py [--json gpu_check.json] [--quick] [--time-budget 480]
    python bench/gpu_check.py --dry-run          # list what it would run (works without a GPU)

It runs from the source tree as it is (no ``pip install``: the GPU machine has no network) with
whatever python, torch, triton and transformers are there (tested with Python 3.10-3.12, torch
2.11 + CUDA 13.0, triton 3.6). Steps, each with its own time limit so the whole run fits the
budget (~8 minutes on an H100/H200):

1. environment: GPU name, driver (nvidia-smi), CUDA, torch, triton and nvcc versions;
2. build: ``python setup.py build_ext --inplace`` with CUDA, for this GPU's architecture only,
   unless ``llmkern._C`` is already built with CUDA (or ``--skip-build``). A CUDA kernel family
   (int8, kd, sparse24) that fails to compile is dropped (one line says so) and the extension is
   built with the others; if the build fails altogether, the Triton checks still run;
3. smoke: one small call per kernel family and GPU backend against the reference, each family in
   its own process: one line per family and backend, so a broken family costs a line, not the run;
4. tests: ``pytest -m gpu`` (every Triton and CUDA kernel against the reference on the GPU), one
   process per kernel family (a kernel that corrupts the CUDA context takes down its own family
   only), collection errors reported and skipped, with JUnit reports;
5. benchmarks of the three kernel families on the GPU, each in its own process, each output
   checked against its baseline's output before it is timed: INT8 (W8A8 vs ``torch._int_mm`` +
   epilogue at 4096^3 and 8192^3, the quantise+GEMM linear path, weight-only M=1 vs bf16
   ``F.linear``), 2:4 (vs dense bf16 and ``to_sparse_semi_structured`` at M=1 and M=2048),
   KD (fused-linear KD at N=8192, H=4096, V=128256 bf16 vs the naive PyTorch loss and Liger
   when installed; the logits KD loss vs naive).

The JSON (``--json``) is rewritten after every step, so an interrupted run keeps what finished
(``"complete": false``). The summary table (kernel, correctness, speedup vs baseline, peak
memory) is printed last. The exit status is 1 on any failed test, mismatch, failed build or step
that ran out of time, 2 when no CUDA device is present (use ``--dry-run`` there).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("int8", "sparse24", "kd")
CUDA_FAMILIES = ("int8", "kd", "sparse24")  # setup.py's LLMKERN_CUDA_FAMILIES
TEST_GROUPS = FAMILIES + ("other",)

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
    p.add_argument("--run-smoke", choices=FAMILIES, help=argparse.SUPPRESS)  # worker mode
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


def test_files(group: str) -> list[str]:
    """The test files of a kernel family (by path: tests/cuda/test_int8.py, tests/nn/test_int8.py,
    ...)."""
    paths = sorted(
        os.path.relpath(p, ROOT).replace(os.sep, "/")
        for p in glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)
    )
    return [
        p
        for p in paths
        if family_of(p) == group or (group == "other" and family_of(p) not in FAMILIES)
    ]


def test_command(junit: str, files: list[str]):
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", "--junitxml", junit, *files]  # fmt: skip


def bench_command(family: str, out: str, quick: bool):
    cmd = [sys.executable, os.path.abspath(__file__), "--run-bench", family, "--json", out]
    return cmd + (["--quick"] if quick else [])


def smoke_command(family: str):
    return [sys.executable, os.path.abspath(__file__), "--run-smoke", family]


def plan(args) -> list[dict]:
    """The steps in order, each with its share of the time budget."""
    budget = args.time_budget
    steps = [{"name": "environment", "what": "GPU name, driver, CUDA, torch, triton, nvcc"}]
    if not args.skip_build:
        steps.append({"name": "build", "cmd": build_command(), "limit": 0.45 * budget,
                      "what": "only if llmkern._C lacks CUDA; TORCH_CUDA_ARCH_LIST = this GPU; "
                              "a CUDA family that fails to compile is dropped"})  # fmt: skip
    for fam in FAMILIES:
        steps.append({"name": f"smoke:{fam}", "cmd": smoke_command(fam), "limit": 60.0,
                      "what": "one small call per GPU backend vs the reference"})  # fmt: skip
    if not args.skip_tests:
        for group in TEST_GROUPS:
            steps.append({"name": f"tests:{group}", "limit": 0.35 * budget / len(TEST_GROUPS),
                          "cmd": test_command(f"<tmp>/tests_{group}.xml", [f"<{group} test files>"]),
                          "env": {"LLMKERN_TEST_GPU": "1", "LLMKERN_TRITON_AUTOTUNE": "0"},
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


def child_env(extra=None) -> dict:
    """The environment of every child process: the source tree on the import path (llmkern is
    not pip-installed on the GPU machine), unbuffered output."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else ""),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    return {**env, **(extra or {})}


def run(cmd, timeout, env=None, log=None):
    """(returncode or None on timeout, seconds, output tail)."""
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(env), timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        out, rc = raw.decode(errors="replace") if isinstance(raw, bytes) else raw, None
    if log:
        with open(log, "w") as f:
            f.write(out)
    return rc, time.time() - t0, out[-4000:]


def environment() -> tuple[dict, list[str]]:
    """(facts, what could not be found out): every probe is allowed to fail."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    missing = []

    def probe(name, fn):
        try:
            fn()
        except Exception as exc:  # recorded; the later steps say what it costs
            missing.append(f"{name}: {type(exc).__name__}: {exc}")

    def triton_version():
        import triton

        env["triton"] = triton.__version__

    def gpu():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gb=round(props.total_memory / 2**30, 1))  # fmt: skip

    def smi():
        q = [shutil.which("nvidia-smi") or "nvidia-smi",
             "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]  # fmt: skip
        env["nvidia_smi"] = subprocess.run(
            q, capture_output=True, text=True, timeout=30
        ).stdout.strip()
        env["driver"] = env["nvidia_smi"].split(",")[1].strip()

    def nvcc():
        home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
        exe = shutil.which("nvcc") or os.path.join(home, "bin", "nvcc")
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        env["nvcc"] = out.strip().splitlines()[-1]

    def transformers_version():
        import transformers

        env["transformers"] = transformers.__version__

    for name, fn in (("triton", triton_version), ("gpu", gpu), ("nvidia-smi", smi),
                     ("nvcc", nvcc), ("transformers", transformers_version)):  # fmt: skip
        probe(name, fn)
    return env, missing


def extension_state() -> dict:
    """What the built llmkern._C offers, asked in a child process (a fresh import)."""
    code = (
        "import json, torch; from llmkern import _ext; "
        "c = _ext._C; cuda = bool(c and c.built_with_cuda()); "
        "ops = _ext.native_ops('CUDA') if cuda else []; "
        "print(json.dumps({'built': c is not None, 'cuda': cuda, 'cuda_ops': ops, "
        "'error': _ext.load_error}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True)  # fmt: skip
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"built": False, "cuda": False, "cuda_ops": [], "error": out.stderr[-500:]}


def failed_cuda_families(build_log: str) -> list[str]:
    """The CUDA kernel families whose sources (csrc/cuda/<family>.cu, <family>_ops.cpp) failed
    to compile, in a build log (compiler diagnostics and ninja's FAILED lines)."""
    found = set()
    for m in re.finditer(
        r"csrc/cuda/(\w+?)(?:_ops)?\.(?:cu|cpp)[:(]|FAILED: \S*?(\w+?)(?:_ops)?\.(?:cuda\.)?o\b",
        build_log,
    ):
        name = m.group(1) or m.group(2)
        if name in CUDA_FAMILIES:
            found.add(name)
    return sorted(found)


def build(limit: float, tmp: str, arch: str) -> tuple[str, float, str, list[str]]:
    """Build the extension with every CUDA family, dropping the ones that fail to compile.
    Returns (status, seconds, detail, lines saying what could not be built)."""
    t0 = time.time()
    families = list(CUDA_FAMILIES)
    lost = []
    while True:
        env = {"TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", arch),
               "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)),
               "LLMKERN_CUDA_FAMILIES": ",".join(families)}  # fmt: skip
        left = limit - (time.time() - t0)
        rc, _, tail = run(build_command(), max(left, 1.0), env, os.path.join(tmp, "build.log"))
        if rc is None:
            return "timeout", time.time() - t0, tail, lost
        if rc == 0:
            state = extension_state()
            ok = state["cuda"] or not families
            return (
                ("ok" if ok and not lost else "partial" if ok else "failed"),
                time.time() - t0,
                "",
                lost,
            )
        with open(os.path.join(tmp, "build.log")) as f:
            bad = [fam for fam in failed_cuda_families(f.read()) if fam in families]
        if not bad:  # not a CUDA family's own source: nothing to drop
            lost.append(f"build failed (not in one CUDA family): {tail[-300:]}")
            return "failed", time.time() - t0, tail, lost
        for fam in bad:
            families.remove(fam)
            first = next((ln for ln in tail.splitlines() if "error" in ln.lower()), "")
            lost.append(f"CUDA family {fam} failed to compile, built without it: {first[:200]}")
            print(f"    {lost[-1]}", flush=True)


def junit_summary(path: str) -> dict:
    """Per test file: tests, failed (failures + errors), skipped; plus the failing test ids."""
    files: dict[str, dict] = {}
    failing = []
    for case in ET.parse(path).getroot().iter("testcase"):
        # classname: tests.<area>.test_<thing>[.<Class>]; the file is <area>/test_<thing>
        parts = case.get("classname", "").split(".")[1:]
        module = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        name = "/".join(parts[: module + 1]) or "?"
        entry = files.setdefault(name, {"tests": 0, "failed": 0, "skipped": 0})
        entry["tests"] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            entry["failed"] += 1
            failing.append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("skipped") is not None:
            entry["skipped"] += 1
    return {"files": files, "failing": failing}


def merge_junit(total: dict, part: dict) -> dict:
    files = {**total.get("files", {}), **part["files"]}
    return {"files": files, "failing": total.get("failing", []) + part["failing"]}


def family_of(name: str) -> str:
    for fam in ("sparse24", "int8", "kd", "triton", "cuda"):
        if fam in name:
            return fam
    return "other"


def summary_table(results: dict) -> str:
    lines = [("kernel", "correctness", "speedup vs baseline", "peak memory")]
    for item in results.get("smoke", []):
        lines.append((f"smoke {item['family']}[{item['backend']}]", item["status"], "", ""))
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


def write_json(path: str, results: dict) -> None:
    """Rewritten after every step (atomically), so an interrupted run keeps what finished."""
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_bench:
        return bench_worker(args.run_bench, args.json, args.quick)
    if args.run_smoke:
        return smoke_worker(args.run_smoke)
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
    meta, missing = environment()
    results = {"meta": meta, "could_not": missing, "steps": [], "smoke": [], "rows": [],
               "mismatches": [], "complete": False}  # fmt: skip
    print(json.dumps(meta, indent=1), flush=True)
    for line in missing:
        print(f"could not: {line}", flush=True)

    def record(name, status, seconds, detail=""):
        results["steps"].append({"name": name, "status": status, "seconds": round(seconds, 1),
                                 "detail": detail})  # fmt: skip
        print(f"--- {name}: {status} ({seconds:.0f}s)", flush=True)
        write_json(args.json, results)

    write_json(args.json, results)
    tests_deadline = None
    for step in steps[1:]:
        left = deadline - time.time()
        name = step["name"]
        if name == "build":
            if extension_state()["cuda"]:
                record("build", "skipped", 0, "llmkern._C already built with CUDA")
                continue
            major, minor = torch.cuda.get_device_capability(0)
            status, sec, tail, lost = build(min(step["limit"], left), tmp, f"{major}.{minor}")
            results["could_not"] += lost
            if status in ("failed", "timeout"):
                print(tail)  # the Triton checks still run
            record("build", status, sec, "; ".join(lost) or tail[-1000:])
        elif name.startswith("smoke:"):
            rc, sec, tail = run(step["cmd"], min(step["limit"], max(left, 1.0)))
            fam = name.split(":")[1]
            found = [json.loads(ln) for ln in tail.splitlines() if ln.startswith('{"family"')]
            if not found:  # the worker died before reporting anything
                found = [
                    {"family": fam, "backend": "all", "status": f"worker failed: {tail[-200:]}"}
                ]
            for item in found:
                print(
                    f"    smoke {item['family']}[{item['backend']}]: {item['status']}", flush=True
                )
            results["smoke"] += found
            bad = [
                i
                for i in found
                if i["status"] not in ("ok",) and not i["status"].startswith("unavailable")
            ]
            record(name, "timeout" if rc is None else ("failed" if bad else "ok"), sec)
        elif name.startswith("tests:"):
            group = name.split(":")[1]
            junit = os.path.join(tmp, f"tests_{group}.xml")
            if os.path.exists(junit):
                os.remove(junit)
            if tests_deadline is None:  # the groups share the tests' part of the budget
                tests_deadline = time.time() + step["limit"] * len(TEST_GROUPS)
            n_left = sum(1 for s in steps if s["name"].startswith("tests:")) - sum(
                1 for s in results["steps"] if s["name"].startswith("tests:")
            )
            limit = max(1.0, min(left, (tests_deadline - time.time()) / n_left))
            rc, sec, tail = run(test_command(junit, test_files(group)), limit, step["env"],
                                os.path.join(tmp, f"tests_{group}.log"))  # fmt: skip
            print(tail[-2500:])
            if os.path.exists(junit):
                results["tests"] = merge_junit(results.get("tests", {}), junit_summary(junit))
            status = {0: "ok", 5: "no tests"}.get(rc, "timeout" if rc is None else "failed")
            record(name, "ok" if status == "no tests" else status, sec)
        else:
            fam = name.split(":")[1]
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
            record(name, status, sec)
    failed = [s for s in results["steps"] if s["status"] not in ("ok", "skipped")]
    results["ok"] = not failed and not results["mismatches"]
    results["seconds"] = round(time.time() - t_start, 1)
    results["complete"] = True
    write_json(args.json, results)
    print(f"\nfull results: {args.json} ({results['seconds']:.0f}s)")
    for line in results["could_not"]:
        print(f"COULD NOT: {line}")
    for m in results["mismatches"]:
        print(f"MISMATCH: {m}")
    print("\n" + summary_table(results))
    print("\ngpu_check: " + ("PASS" if results["ok"] else "FAIL"))
    return 0 if results["ok"] else 1


# ---------------------------------------------------------------------------------------------
# Smoke worker: one small call per family and GPU backend (own process per family)
# ---------------------------------------------------------------------------------------------

# (op, backend-independent call) per family: small shapes that still cross block boundaries.
SMOKE_OPS = {
    "int8": ("quantize_per_token", "w8a8_matmul", "w8_matmul", "w8a8_linear"),
    "sparse24": ("sparse24_matmul", "sparse24_w8a8_matmul", "sparse24_w8_matmul"),
    "kd": ("kd_loss_rows", "kd_loss_topk_rows"),
}


def _smoke_call(op: str, backend: str):
    """Run ``op`` on small CUDA inputs with ``backend``; return (got, want) tensors."""
    import torch

    import llmkern
    from llmkern.ops import int8 as int8_ops

    dev, bf16 = "cuda", torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dev, dtype)

    x, w = randn(37, 320, dtype=bf16), randn(72, 320)
    if op == "quantize_per_token":
        return lambda b: torch.cat(
            [t.float().reshape(-1) for t in llmkern.quantize_per_token(x, backend=b)]
        )
    if op in ("w8a8_matmul", "w8_matmul", "w8a8_linear"):
        w_q, w_s = int8_ops.quantize_weight(w)
        x_q, x_s = int8_ops.quantize_per_token_ref(x)
        bias = randn(72)
        if op == "w8a8_matmul":
            return lambda b: llmkern.w8a8_matmul(x_q, w_q, x_s, w_s, bias, bf16, backend=b)
        if op == "w8_matmul":
            return lambda b: llmkern.w8_matmul(x, w_q, w_s, bias, backend=b)
        x_scale = torch.tensor(0.02, device=dev)
        return lambda b: int8_ops.w8a8_linear(x, w_q, w_s, bias, x_scale, backend=b)
    if op.startswith("sparse24"):
        w24 = llmkern.prune_24(w.to(bf16) if op == "sparse24_matmul" else w)
        if op == "sparse24_matmul":
            values, meta = llmkern.compress_24(w24)
            return lambda b: llmkern.sparse24_matmul(x, values, meta, backend=b)
        w_q, w_s = int8_ops.quantize_weight(w24)
        values, meta = llmkern.compress_24(w_q)
        if op == "sparse24_w8_matmul":
            return lambda b: llmkern.sparse24_w8_matmul(x, values, meta, w_s, backend=b)
        x_q, x_s = int8_ops.quantize_per_token_ref(x)
        return lambda b: llmkern.sparse24_w8a8_matmul(
            x_q, values, meta, x_s, w_s, None, bf16, backend=b
        )
    zs, zt = randn(9, 1000, dtype=bf16), randn(9, 1000, dtype=bf16)
    labels = torch.randint(0, 1000, (9,), generator=g).to(dev)
    if op == "kd_loss_rows":
        return lambda b: llmkern.kd_loss(zs, zt, labels, 2.0, 0.5, reduction="none", backend=b)
    top = zt.float().log_softmax(1).topk(20, dim=1)
    return lambda b: llmkern.kd_loss_topk(zs, top.indices, top.values, labels, 2.0, 0.5,
                                          reduction="none", backend=b)  # fmt: skip


def smoke_worker(family: str) -> int:
    """Prints one JSON line per (family, backend): ok, a mismatch or the error, and exits 0."""
    import torch

    from llmkern import backends

    status = {}
    for op in SMOKE_OPS[family]:
        for backend in ("cuda", "triton"):
            if status.get(backend, "ok") != "ok":
                continue  # one line per family and backend: the first problem
            kernel = backends.kernels(op).get(backend)
            ok, why = backends.backend_available(backend, "cuda")
            if not torch.cuda.is_available():
                ok, why = False, "no CUDA device"
            if kernel is None or not ok:
                status.setdefault(backend, f"unavailable ({why or 'no kernel for ' + op})")
                continue
            try:
                call = _smoke_call(op, backend)
                got, want = call(backend).float(), call("reference").float()
                torch.cuda.synchronize()
                check = _check(got, want, 2e-2, op)
            except Exception as exc:  # reported as this family's line; the run goes on
                check = f"{op}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            status[backend] = "ok" if check == "ok" else check
    for backend, s in status.items():
        print(json.dumps({"family": family, "backend": backend, "status": s}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Benchmark workers (run in their own process on the GPU)
# ---------------------------------------------------------------------------------------------


def bench_worker(family: str, out: str, quick: bool) -> int:
    import torch

    from llmkern.apps import benchmark

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    rows, mismatches = [], []
    fn = {"int8": bench_int8, "sparse24": bench_sparse24, "kd": bench_kd}[family]
    for op, shape, baseline in cases(family, quick):
        try:
            new_rows, bad = fn(op, shape, baseline)
        except torch.cuda.OutOfMemoryError as exc:
            new_rows, bad = [], [f"{op} {_shape(shape)}: out of memory ({exc})"]
        except Exception as exc:  # a broken kernel costs its case, not the family's run
            line = str(exc).splitlines()[0][:300] if str(exc) else ""
            new_rows, bad = [], [f"{op} {_shape(shape)}: {type(exc).__name__}: {line}"]
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
    from llmkern.apps import benchmark

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
    from llmkern.apps import benchmark

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
    from llmkern.apps import benchmark

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
