"""CPU backend of the KD losses: ``llmkern_C::kd_loss_rows`` / ``kd_loss_topk_rows`` (C++,
csrc/cpu/kd_ops.cpp over the AVX-512 / AVX2 / scalar row kernels chosen at run time). float32,
bfloat16 and float16 inputs are read natively; float64 inputs are left to the reference."""

from __future__ import annotations

import torch

from llmkern import _ext
from llmkern.backends import register

_NATIVE = (torch.float32, torch.bfloat16, torch.float16)
_WHY = "the CPU KD kernels take float32/bfloat16/float16 logits (float64 runs on the reference)"


def _native(*tensors) -> bool:
    return all(t.dtype in _NATIVE for t in tensors)


@register("kd_loss_rows", "cpu", ("cpu",), supports=lambda s, t, *_: _native(s, t), why=_WHY)
def kd_loss_rows_cpu(
    student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
):
    _ext.require()
    return torch.ops.llmkern_C.kd_loss_rows(
        student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
    )


@register(
    "kd_loss_topk_rows", "cpu", ("cpu",), supports=lambda s, i, lp, *_: _native(s, lp), why=_WHY
)
def kd_loss_topk_rows_cpu(
    student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
):
    _ext.require()
    return torch.ops.llmkern_C.kd_loss_topk_rows(
        student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
    )


def vector_math(x: torch.Tensor, fn: str) -> torch.Tensor:
    """The active ISA's vectorised ``exp`` or ``log`` of the KD kernels (for accuracy tests)."""
    _ext.require()
    return torch.ops.llmkern_C.kd_vector_math(x, fn)
