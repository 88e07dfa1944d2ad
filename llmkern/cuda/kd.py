"""CUDA backend of the KD losses: the CUDA kernels of ``llmkern_C::kd_loss_rows`` /
``kd_loss_topk_rows`` (csrc/cuda/kd.cu through csrc/cuda/kd_ops.cpp). float32, bfloat16 and float16 logits are read
natively; float64 calls are not supported here (automatic selection moves on to the next
backend). Registered only when the extension was built with CUDA."""

from __future__ import annotations

import torch

from llmkern.backends import register
from llmkern.cuda.int8 import has_op

_NATIVE = (torch.float32, torch.bfloat16, torch.float16)
_WHY = "the CUDA KD kernels take float32/bfloat16/float16 logits (float64 is not supported)"


def _native(*tensors) -> bool:
    return all(t.dtype in _NATIVE for t in tensors)


if has_op("kd_loss_rows"):

    @register("kd_loss_rows", "cuda", ("cuda",), supports=lambda s, t, *_: _native(s, t), why=_WHY)
    def kd_loss_rows_cuda(
        student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
    ):
        return torch.ops.llmkern_C.kd_loss_rows(
            student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
        )


if has_op("kd_loss_topk_rows"):

    @register(
        "kd_loss_topk_rows",
        "cuda",
        ("cuda",),
        supports=lambda s, i, lp, *_: _native(s, lp),
        why=_WHY,
    )
    def kd_loss_topk_rows_cuda(
        student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
    ):
        return torch.ops.llmkern_C.kd_loss_topk_rows(
            student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
        )
