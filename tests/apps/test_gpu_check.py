"""The CPU-side parts of bench/gpu_check.py: it imports without a GPU, parses and rejects
arguments, lists its plan with --dry-run, refuses to run without CUDA, and reads pytest's JUnit
report into the summary table."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from tests import ROOT

SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_lists_every_step_from_the_command_line():
    out = subprocess.run([sys.executable, SCRIPT, "--dry-run"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("environment", "build", "setup.py build_ext --inplace", "smoke:int8",
                   "smoke:sparse24", "smoke:kd", "tests:int8", "tests:other",
                   "LLMKERN_TEST_GPU=1", "-m gpu", "--continue-on-collection-errors",
                   "--junitxml", "bench:int8", "bench:sparse24",
                   "bench:kd", "w8a8_matmul (m=8192,n=8192,k=8192) vs torch._int_mm+epilogue",
                   "w8_matmul (m=1,n=4096,k=4096) vs F.linear bf16",
                   "sparse24_matmul (m=2048,n=4096,k=4096)",
                   "fused_linear_kd_loss (n=8192,h=4096,v=128256) vs naive"):  # fmt: skip
        assert needle in text, (needle, text)


def test_dry_run_limits_add_up_to_the_budget(gc, capsys):
    assert gc.main(["--dry-run", "--time-budget", "300"]) == 0
    text = capsys.readouterr().out
    assert "build [<= 135s]" in text and "tests:kd [<= 26s]" in text  # 0.35 x 300 s / 4 groups


def test_skips_quick_and_families_shape_the_plan(gc):
    smoke = ["smoke:int8", "smoke:sparse24", "smoke:kd"]
    tests = ["tests:int8", "tests:sparse24", "tests:kd", "tests:other"]
    names = [s["name"] for s in gc.plan(gc.parse_args(["--skip-build", "--families", "kd"]))]
    assert names == ["environment", *smoke, *tests, "bench:kd"]
    names = [s["name"] for s in gc.plan(gc.parse_args(["--skip-tests", "--skip-bench"]))]
    assert names == ["environment", "build", *smoke]
    quick = list(gc.cases("int8", quick=True))
    assert [op for op, _, _ in quick] == ["w8a8_matmul", "w8a8_linear", "w8_matmul"]
    assert {op: s for op, s, _ in gc.cases("kd", quick=True)}["fused_linear_kd_loss"]["n"] == 2048


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--families", "int4"], "unknown"),
        (["--families", ","], "empty list"),
        (["--time-budget", "5"], "between 60 and 7200"),
        (["--time-budget", "abc"], "invalid float value"),
        (["--frobnicate"], "unrecognized arguments"),
        (["--run-bench", "fp8"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(gc, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        gc.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_it_refuses_to_run(gc, capsys):
    assert gc.main(["--skip-build"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_junit_report_becomes_the_summary_table(gc, tmp_path):
    junit = tmp_path / "r.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.cuda.test_int8" name="test_a"/>'
        '<testcase classname="tests.cuda.test_int8" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.triton.test_kd.TestRows" name="test_c"><skipped/></testcase>'
        '<testcase classname="tests.triton.test_kd.TestRows" name="test_d"/>'
        "</testsuite></testsuites>"
    )
    summary = gc.junit_summary(str(junit))
    assert summary["files"]["cuda/test_int8"] == {"tests": 2, "failed": 1, "skipped": 0}
    assert summary["failing"] == ["tests.cuda.test_int8::test_b"]
    rows = [
        {"op": "w8a8_matmul", "shape": {"m": 4096}, "impl": "cuda", "baseline": "torch._int_mm",
         "speedup_vs_baseline": 1.7, "peak_mem_mb": 32.0, "extra": {"check": "ok"}},
        {"op": "w8a8_matmul", "shape": {"m": 4096}, "impl": "torch._int_mm",
         "baseline": "torch._int_mm", "speedup_vs_baseline": 1.0, "peak_mem_mb": 64.0},
    ]  # fmt: skip
    steps = [{"name": "bench:kd", "status": "timeout"}]
    table = gc.summary_table({"tests": summary, "rows": rows, "steps": steps})
    lines = table.splitlines()
    assert lines[0].split() == ["kernel", "correctness", "speedup", "vs", "baseline", "peak",
                                "memory"]  # fmt: skip
    assert any("cuda/test_int8" in ln and "FAIL 1/2" in ln for ln in lines)
    assert any("triton/test_kd" in ln and "ok 1/2" in ln for ln in lines)
    assert any("w8a8_matmul[cuda]" in ln and "1.70x vs torch._int_mm" in ln for ln in lines)
    assert not any("[torch._int_mm]" in ln for ln in lines)  # baselines are not kernels
    assert any("bench:kd" in ln and "TIMEOUT" in ln for ln in lines)


def test_run_reports_timeouts_and_exit_codes(gc):
    rc, _, out = gc.run([sys.executable, "-c", "print('hi'); import sys; sys.exit(3)"], 30)
    assert rc == 3 and "hi" in out
    rc, seconds, _ = gc.run([sys.executable, "-c", "import time; time.sleep(30)"], 1)
    assert rc is None and seconds < 20


def test_check_flags_mismatches(gc):
    want = torch.ones(4, 4)
    assert gc._check(want * (1 + 1e-3), want, 1e-2, "x") == "ok"
    assert "relative error" in gc._check(want * 1.1, want, 1e-2, "x")
    assert "non-finite" in gc._check(want * float("nan"), want, 1e-2, "x")
    assert "shape" in gc._check(torch.ones(4), want, 1e-2, "x")


def test_test_files_are_grouped_by_kernel_family(gc):
    groups = {g: gc.test_files(g) for g in gc.TEST_GROUPS}
    assert "tests/cuda/test_int8.py" in groups["int8"] and "tests/nn/test_int8.py" in groups["int8"]
    assert "tests/triton/test_sparse24.py" in groups["sparse24"]
    assert "tests/cuda/test_kd.py" in groups["kd"]
    assert "tests/ops/test_gpu_paths.py" in groups["other"]
    every = sorted(f for files in groups.values() for f in files)
    assert len(every) == len(set(every))  # each file in one group
    tests = (ROOT / "tests").rglob("test_*.py")
    assert every == sorted(p.relative_to(ROOT).as_posix() for p in tests)


def test_failed_cuda_families_are_read_from_the_build_log(gc):
    log = (
        "[3/22] c++ ... -c /r/csrc/cpu/isa.cpp -o /r/build/t/csrc/cpu/isa.o\n"
        "FAILED: /r/build/t/csrc/cuda/sparse24_ops.o\n"
        "/r/csrc/cuda/sparse24_ops.cpp:7:10: fatal error: cusparse.h: No such file or directory\n"
        "/r/csrc/cuda/kd.cu(120): error: identifier undefined\n"
        "FAILED: /r/build/t/csrc/cuda/int8.cuda.o\n"
    )
    assert gc.failed_cuda_families(log) == ["int8", "kd", "sparse24"]
    assert gc.failed_cuda_families("FAILED: /r/build/t/csrc/cpu/isa.o\nerror: x") == []


def test_json_is_written_whole_after_each_step(gc, tmp_path):
    path = str(tmp_path / "r.json")
    gc.write_json(path, {"steps": [{"name": "build"}], "complete": False})
    gc.write_json(path, {"steps": [{"name": "build"}, {"name": "smoke:kd"}], "complete": False})
    with open(path) as f:
        data = __import__("json").load(f)
    assert [s["name"] for s in data["steps"]] == ["build", "smoke:kd"] and not data["complete"]
    assert os.listdir(tmp_path) == ["r.json"]  # no partial file left behind


def test_children_import_llmkern_from_the_tree(gc, tmp_path):
    """On the GPU machine llmkern is not pip-installed: every child finds it in the tree."""
    rc, _, out = gc.run(
        [sys.executable, "-c", "import llmkern, os; print(os.path.dirname(llmkern.__file__))"], 60
    )
    assert rc == 0 and out.strip().endswith(os.path.join(ROOT, "llmkern")), out


def test_smoke_worker_reports_one_line_per_backend_without_crashing(gc):
    """Without a GPU every backend is unavailable: the worker says so and exits 0."""
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU path")
    rc, _, out = gc.run(gc.smoke_command("int8"), 120)
    lines = [__import__("json").loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert rc == 0 and {d["backend"] for d in lines} == {"cuda", "triton"}, out
    assert all(d["family"] == "int8" and d["status"].startswith("unavailable") for d in lines)
