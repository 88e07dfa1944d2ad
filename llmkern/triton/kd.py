"""Triton backend of the KD loss rows (kernels in llmkern.triton.kernels.kd, imported on first
call). The kernels compute in float32, so float64 student logits are left to the other backends
(float64 teachers are fine: the reference casts them to the student's float32 too)."""

import torch

from llmkern.backends import register

DEVICES = ("cpu", "cuda")  # cpu: only under TRITON_INTERPRET=1, when asked for by name
_WHY = "the Triton KD kernels compute in float32; float64 student logits need the reference"


def _not_float64(student, *args):
    return student.dtype != torch.float64


@register("kd_loss_rows", "triton", DEVICES, supports=_not_float64, why=_WHY)
def kd_loss_rows(
    student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
):
    from llmkern.triton.kernels import kd

    return kd.kd_loss_rows(
        student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
    )


@register("kd_loss_topk_rows", "triton", DEVICES, supports=_not_float64, why=_WHY)
def kd_loss_topk_rows(
    student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
):
    from llmkern.triton.kernels import kd

    return kd.kd_loss_topk_rows(
        student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
    )
