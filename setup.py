"""Build of the native extension ``llmkern._C``.

C++ CPU sources (csrc/*.cpp, csrc/cpu/*.cpp) are always compiled. CUDA sources (csrc/cuda/*.cu
and the torch glue csrc/cuda/*.cpp) are added only when both a CUDA toolkit and a CUDA build of
torch are present, or LLMKERN_FORCE_CUDA=1. No -march=native: each ISA-specific kernel file
selects its own target with ``#pragma GCC target`` and is chosen at run time (csrc/cpu/isa.h).

Environment knobs:
  LLMKERN_NO_CUDA=1      build the CPU extension only
  LLMKERN_CUDA_FAMILIES  comma-separated CUDA kernel families to build (default: all of
                         int8,kd,sparse24); bench/gpu_check.py drops one that fails to compile
  LLMKERN_SANITIZE=1     -fsanitize=address,undefined (CI sanitizer step)
  LLMKERN_DEBUG=1        -O0 -g
"""

import glob
import os
import shutil

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home_beside_nvcc():
    """torch takes CUDA_HOME, when unset, as the folder above the ``nvcc`` on PATH. Where that
    nvcc is a wrapper (e.g. /usr/local/bin/nvcc calling the toolkit's), that folder holds no CUDA
    headers and the torch glue fails on cuda_runtime.h: point CUDA_HOME at /usr/local/cuda."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    beside = os.path.dirname(os.path.dirname(nvcc)) if nvcc else None
    if beside and os.path.exists(os.path.join(beside, "include", "cuda_runtime.h")):
        return
    if os.path.exists("/usr/local/cuda/include/cuda_runtime.h"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


_cuda_home_beside_nvcc()  # before torch.utils.cpp_extension reads it

from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


CUDA_FAMILIES = ("int8", "kd", "sparse24")


def _cuda_families():
    """The CUDA kernel families to build: csrc/cuda/<family>.cu and <family>_ops.cpp each."""
    value = os.environ.get("LLMKERN_CUDA_FAMILIES")
    if value is None:
        return CUDA_FAMILIES
    chosen = tuple(f for f in value.split(",") if f)
    unknown = sorted(set(chosen) - set(CUDA_FAMILIES))
    if unknown:
        raise SystemExit(f"LLMKERN_CUDA_FAMILIES: unknown {unknown}; choose from {CUDA_FAMILIES}")
    return chosen


def _want_cuda():
    if _flag("LLMKERN_NO_CUDA"):
        return False
    if _flag("LLMKERN_FORCE_CUDA"):
        return True
    import torch

    return CUDA_HOME is not None and torch.version.cuda is not None


def extensions():
    # -fopenmp: at::parallel_for is an inline OpenMP loop in torch's CPU builds; compiled without
    # it, every kernel runs on one thread. The extension then shares torch's libgomp (same
    # soname, already loaded), so torch.set_num_threads applies to it.
    # -g0: Python's own CFLAGS add -g, which costs 40% of the compile time of a torch glue file
    # and nothing a release build uses (LLMKERN_DEBUG keeps the debug information).
    # No -std: BuildExtension adds the standard torch's headers need (C++20 from torch 2.13 on,
    # C++17 for torch 2.11 on the GPU machine).
    cxx = ["-O3", "-g0", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas", "-fopenmp"]
    ldflags = ["-fopenmp"]
    if _flag("LLMKERN_DEBUG"):
        cxx = ["-O0", "-g", "-fopenmp"]
    if _flag("LLMKERN_SANITIZE"):
        san = [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all",
        ]
        cxx += san + ["-g"]
        ldflags += san
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    families = _cuda_families()
    if _want_cuda() and families:
        # The .cu files first: ninja starts them first, and the longest (sparse24.cu, about 3 min
        # for two architectures) then overlaps the C++ files instead of finishing alone.
        kernels = [src for family in families for src in _sources(f"csrc/cuda/{family}.cu")]
        glue = [src for family in families for src in _sources(f"csrc/cuda/{family}_ops.cpp")]
        sources = kernels + sources + glue
        # Ampere and Hopper SASS (the kernels need sm_80+: cp.async, int8 mma.sync, ldmatrix)
        # unless the builder asks for other architectures. No --use_fast_math: the kernels
        # rely on IEEE division and unfused multiplies where they must match the reference.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return [
            CUDAExtension(
                "llmkern._C",
                sources,
                include_dirs=include_dirs,
                define_macros=[("LLMKERN_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=ldflags,
            )
        ]
    return [
        CppExtension(
            "llmkern._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=ldflags,
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
