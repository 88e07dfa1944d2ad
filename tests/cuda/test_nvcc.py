"""CUDA sources compile, and the W8A8 GEMM's index math is right, without a GPU.

- Every ``csrc/**/*.cu`` is compiled by nvcc for sm_80 (``-cubin``) and sm_90 (``-c``: the same
  device compile plus the host side of the launchers, which ``-cubin`` does not check), with the
  flags torch's extension build adds (no half/bfloat16 operators) and every warning an error.
  The compiles run in parallel once per session; each (file, arch) is its own test. Skipped when
  nvcc is not installed.
- tests/cuda/int8_layout_check.cpp (host-only C++) simulates ldmatrix over the swizzled shared-memory
  tile of csrc/cuda/int8_layout.cuh and checks the mma.m16n8k32 fragments it delivers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import ROOT

CU_FILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*.cu"))
ARCHS = ("sm_80", "sm_90")
HOST_CHECK_ARCH = "sm_90"  # compiled with -c, so the host code is compiled too
NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "-Werror",
    "all-warnings",
    "-Xcompiler",
    "-Wall",
    "-I",
    str(ROOT / "csrc"),
]
COMPILE_TIMEOUT_S = 600


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return None


def _compile(nvcc: str, src: str, arch: str, out_dir: Path) -> tuple[int, str]:
    mode = "-c" if arch == HOST_CHECK_ARCH else "-cubin"
    out = out_dir / f"{Path(src).stem}.{arch}{mode.replace('-', '.')}"
    cmd = [nvcc, f"-arch={arch}", mode, *NVCC_FLAGS, "-o", str(out), str(ROOT / src)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"nvcc timed out after {COMPILE_TIMEOUT_S} s: {' '.join(cmd)}"
    return res.returncode, res.stdout + res.stderr


@pytest.fixture(scope="session")
def nvcc_results(tmp_path_factory):
    """{(file, arch): (returncode, output)} for every .cu file and architecture."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    out_dir = tmp_path_factory.mktemp("nvcc")
    jobs = [(src, arch) for src in CU_FILES for arch in ARCHS]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {job: pool.submit(_compile, nvcc, *job, out_dir) for job in jobs}
        return {job: f.result() for job, f in futures.items()}


def test_cuda_sources_found():
    assert "csrc/cuda/int8.cu" in CU_FILES and "csrc/cuda/kd.cu" in CU_FILES, CU_FILES


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", CU_FILES)
def test_cu_file_compiles(nvcc_results, src, arch):
    rc, output = nvcc_results[(src, arch)]
    assert rc == 0, f"nvcc {src} for {arch} failed:\n{output[-4000:]}"
    assert "warning" not in output.lower(), f"nvcc {src} for {arch} warned:\n{output[-4000:]}"


def test_w8a8_fragment_layout(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path / "layout_check"
    build = subprocess.run(
        [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "csrc"),
         str(Path(__file__).with_name("int8_layout_check.cpp")), "-o", str(exe)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "layout checks passed" in run.stdout, run.stdout[-4000:]
