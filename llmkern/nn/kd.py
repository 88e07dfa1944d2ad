"""Knowledge-distillation loss modules (Hinton KD: tau^2 KL at temperature tau plus hard-label
cross-entropy), backed by :func:`llmkern.kd_loss` and :func:`llmkern.fused_linear_kd_loss`.

Leading batch/sequence dimensions are flattened (logits ``[..., V]``, hidden states
``[..., H]``, labels ``[...]``); the teacher's and the labels' leading dimensions must be the
student's (checked: equal sizes in another shape would pair unrelated rows); with
``reduction="none"`` the per-row losses come back in the leading shape. Both work under ``torch.compile`` (the losses are custom ops with fake kernels)."""

from __future__ import annotations

import torch
from torch import nn

from llmkern.nn._base import NoTorchScript
from llmkern.ops.kd import DIVERGENCES, check_kd_options, fused_linear_kd_loss, kd_loss


def _flat(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape [..., features], got {tuple(t.shape)}")
    return t.reshape(-1, t.shape[-1])


def _check_lead(name: str, t, lead, other: str) -> None:
    """The teacher's leading (token) dimensions must be the student's: flattening tensors of the
    same size but other shapes would pair unrelated rows."""
    if isinstance(t, torch.Tensor) and tuple(t.shape[:-1]) != tuple(lead):
        raise ValueError(
            f"{name} must have shape [{', '.join(map(str, lead))}, ...] like {other}, "
            f"got {tuple(t.shape)}"
        )


def _flat_labels(labels, lead):
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if tuple(labels.shape) != tuple(lead):
        raise ValueError(f"labels must have shape {tuple(lead)}, got {tuple(labels.shape)}")
    return labels.reshape(-1)


class _KDOptions(NoTorchScript, nn.Module):
    def __init__(self, temperature, alpha, ignore_index, reduction, divergence, beta):
        super().__init__()
        check_kd_options(0, None, temperature, alpha, ignore_index, reduction, beta)
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        self.temperature = temperature
        self.alpha = alpha
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.divergence = divergence
        self.beta = beta

    def _unflatten(self, loss, lead):
        return loss.reshape(lead) if self.reduction == "none" else loss

    def extra_repr(self) -> str:
        s = (f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}, "
             f"reduction={self.reduction!r}, divergence={self.divergence!r}")  # fmt: skip
        return s + (f", beta={self.beta}" if self.divergence == "jsd" else "")


class KDLoss(_KDOptions):
    """``loss = alpha tau^2 D(softmax(teacher/tau) || softmax(student/tau)) + (1 - alpha) CE``
    averaged over rows whose label is not ``ignore_index`` (see :mod:`llmkern.ops.kd`).

    ``forward(student_logits [..., V], teacher_logits [..., V_t >= V], labels [...] | None)``;
    the teacher may be logits or log-probabilities and gets no gradient; ``labels=None`` gives
    the soft-target loss alone. ``divergence`` is ``"kl"``, ``"reverse_kl"`` or ``"jsd"``
    (generalised JSD with weight ``beta``)."""

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5, ignore_index: int = -100,
                 reduction: str = "mean", divergence: str = "kl", beta: float = 0.5,
                 *, backend: str | None = None):  # fmt: skip
        super().__init__(temperature, alpha, ignore_index, reduction, divergence, beta)
        self.backend = backend

    def forward(self, student_logits, teacher_logits, labels=None):
        student = _flat("student_logits", student_logits)
        lead = student_logits.shape[:-1]
        _check_lead("teacher_logits", teacher_logits, lead, "student_logits")
        loss = kd_loss(
            student, _flat("teacher_logits", teacher_logits),
            _flat_labels(labels, lead), self.temperature, self.alpha, self.ignore_index,
            self.reduction, self.divergence, self.beta, backend=self.backend,
        )  # fmt: skip
        return self._unflatten(loss, lead)


class FusedLinearKDLoss(_KDOptions):
    """:class:`KDLoss` on ``student_hidden @ student_head_weight.T`` and
    ``teacher_hidden @ teacher_head_weight.T`` without materialising those logits: they are
    computed ``chunk_size`` tokens at a time and the gradients of the student hidden states and
    head weight are accumulated chunk by chunk (see :func:`llmkern.fused_linear_kd_loss`).

    ``forward(student_hidden [..., H_s], student_head_weight [V, H_s], teacher_hidden
    [..., H_t], teacher_head_weight [V_t >= V, H_t], labels [...] | None)``."""

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5, ignore_index: int = -100,
                 reduction: str = "mean", divergence: str = "kl", beta: float = 0.5,
                 *, chunk_size: int | None = None, backend: str | None = None):  # fmt: skip
        super().__init__(temperature, alpha, ignore_index, reduction, divergence, beta)
        self.chunk_size = chunk_size
        self.backend = backend

    def forward(self, student_hidden, student_head_weight, teacher_hidden, teacher_head_weight,
                labels=None):  # fmt: skip
        student = _flat("student_hidden", student_hidden)
        lead = student_hidden.shape[:-1]
        _check_lead("teacher_hidden", teacher_hidden, lead, "student_hidden")
        loss = fused_linear_kd_loss(
            student, student_head_weight,
            _flat("teacher_hidden", teacher_hidden), teacher_head_weight,
            _flat_labels(labels, lead), self.temperature, self.alpha, self.ignore_index,
            self.reduction, self.divergence, self.beta, chunk_size=self.chunk_size,
            backend=self.backend,
        )  # fmt: skip
        return self._unflatten(loss, lead)
