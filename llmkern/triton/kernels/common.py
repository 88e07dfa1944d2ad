"""Launch-side helpers shared by the Triton kernels."""

from __future__ import annotations

import os

import torch
import triton

from llmkern.backends import triton_interpret

# Under TRITON_INTERPRET=1 the kernels run in numpy on CPU tensors: one small, fixed
# configuration instead of autotuning (which would compile and time every configuration).
INTERPRET = triton_interpret()
# LLMKERN_TRITON_AUTOTUNE=0: each kernel uses the first configuration of its list instead of
# timing them all (GPU correctness runs: one compile per kernel variant instead of six).
AUTOTUNE = os.environ.get("LLMKERN_TRITON_AUTOTUNE", "1") != "0"


def rowmajor(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit stride along its last dimension (a copy only when needed)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(n)
