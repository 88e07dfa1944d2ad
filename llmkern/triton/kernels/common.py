"""Launch-side helpers shared by the Triton kernels."""

from __future__ import annotations

import os

import torch
import triton

from llmkern.backends import triton_interpret

# Under TRITON_INTERPRET=1 the kernels run in numpy on CPU tensors: one small, fixed
# configuration instead of autotuning (which would compile and time every configuration).
INTERPRET = triton_interpret()


@triton.jit
def _loop_probe(n):
    for _ in range(0, n, 1):
        pass


def check_interpreter() -> None:
    """Fail clearly where the interpreter cannot run a loop over a kernel argument: triton 3.6's
    interpreter converts a scalar argument (a one-element numpy array) with ``int()``, which
    numpy >= 2.4 refuses ("only 0-dimensional arrays can be converted"); later triton squeezes
    it first. The kernels are right; use numpy < 2.4 with such a triton."""
    try:
        _loop_probe[(1,)](2)
    except Exception as exc:
        import numpy

        raise RuntimeError(
            f"triton {triton.__version__}'s interpreter cannot run llmkern's kernels with numpy "
            f"{numpy.__version__} ({exc}); install numpy<2.4 or a newer triton"
        ) from exc


if INTERPRET:
    check_interpreter()
# LLMKERN_TRITON_AUTOTUNE=0: each kernel uses the first configuration of its list instead of
# timing them all (GPU correctness runs: one compile per kernel variant instead of six).
AUTOTUNE = os.environ.get("LLMKERN_TRITON_AUTOTUNE", "1") != "0"


def rowmajor(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit stride along its last dimension (a copy only when needed)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(n)
