"""Knowledge-distillation losses (Hinton et al.): temperature-softened divergence to a teacher plus
hard-label cross-entropy, with the logits gradient produced in the same pass.

For student logits z [N, V], teacher logits v [N, V_t] (V_t >= V), labels y [N], temperature
tau > 0, alpha in [0, 1]; p = softmax(v[:, :V] / tau) (teacher entries beyond the student's
vocabulary are dropped and the rest renormalised), q = softmax(z / tau):

    row_loss = alpha * tau^2 * D(p, q) + (1 - alpha) * CE(z, y)     (0 for ignored rows)

with D = KL(p || q) (``"kl"``), KL(q || p) (``"reverse_kl"``) or the generalised
Jensen-Shannon divergence ``beta * KL(p || M) + (1 - beta) * KL(q || M)``, M = beta p + (1-beta) q
(``"jsd"``). With ``labels=None`` there is no CE term, every row counts and the KD term has
weight 1 (alpha is not used). The teacher may be given as logits or as log-probabilities: both
give the same p, since softmax is shift-invariant per row. Reductions: ``mean`` over valid rows
(0 when there are none), ``sum``, ``none`` (per row). All arithmetic in float32 (float64 inputs
stay float64); the loss is float32.

Backend kernel contract, op ``kd_loss_rows``: (student, teacher, labels|None, tau, alpha,
ignore_index, divergence, beta, compute_grad) -> (row_loss float32 [N], grad) where grad is
d(sum of row_loss)/d student in the student's dtype, [N, V], or an empty tensor when
``compute_grad`` is False. ``kd_loss_topk_rows`` is the same for a sparse teacher given as top-k
(indices [N, k], log-probabilities [N, k]); only ``"kl"`` is defined there (p is renormalised
over the k entries).
"""

from __future__ import annotations

import math

import torch

from llmkern.backends import dispatch, register
from llmkern.ops._checks import (
    FLOAT_DTYPES,
    check_choice,
    check_float_scalar,
    check_same_device,
    check_shape,
    check_tensor,
)

DIVERGENCES = ("kl", "reverse_kl", "jsd")
REDUCTIONS = ("mean", "sum", "none")
_DEVICES = ("cpu", "cuda")

# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _weights(labels, alpha):
    return (alpha, 1.0 - alpha) if labels is not None else (1.0, 0.0)


def _hard_label_terms(z, labels, ignore_index, valid):
    """CE per row and its gradient d CE / d z (zero rows where invalid)."""
    logq1 = torch.log_softmax(z, dim=1)
    safe = torch.where(valid, labels, 0)
    ce = -logq1.gather(1, safe[:, None])[:, 0]
    grad = logq1.exp()
    grad[torch.arange(z.shape[0], device=z.device), safe] -= 1.0
    return ce, grad


def kd_loss_rows_ref(
    student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
):
    cd = _compute_dtype(student)
    n, v = student.shape
    z = student.to(cd)
    logq = torch.log_softmax(z / tau, dim=1)
    logp = torch.log_softmax(teacher[:, :v].to(cd) / tau, dim=1)
    q, p = logq.exp(), logp.exp()
    if divergence == "kl":
        div = torch.where(p > 0, p * (logp - logq), 0.0).sum(1)
        grad_s = q - p
    elif divergence == "reverse_kl":
        r = torch.where(q > 0, logq - logp, 0.0)
        div = (q * r).sum(1)
        grad_s = q * (r - div[:, None])
    else:  # jsd
        # log M in log space: log(beta p + (1 - beta) q) of underflowed p and q would be -inf
        # (and 0 * inf = NaN); a term with weight 0 (beta = 0 or 1) is left out, not multiplied.
        log_b = math.log(beta) if beta > 0 else -math.inf
        log_1b = math.log1p(-beta) if beta < 1 else -math.inf
        logm = torch.logaddexp(logp + log_b, logq + log_1b)
        div = torch.zeros_like(logq[:, 0])
        g = torch.zeros_like(logq)
        if beta > 0:
            div = div + beta * torch.where(p > 0, p * (logp - logm), 0.0).sum(1)
        if beta < 1:
            g = (1.0 - beta) * torch.where(q > 0, logq - logm, 0.0)
            div = div + (q * g).sum(1)
        grad_s = q * (g - (q * g).sum(1, keepdim=True))
    w_kd, w_ce = _weights(labels, alpha)
    rows = w_kd * tau * tau * div
    grad = w_kd * tau * grad_s  # tau^2 * d/dz(z / tau)
    if labels is not None:
        valid = labels != ignore_index
        ce, ce_grad = _hard_label_terms(z, labels, ignore_index, valid)
        rows = torch.where(valid, rows + w_ce * ce, 0.0)
        grad = torch.where(valid[:, None], grad + w_ce * ce_grad, 0.0)
    rows = rows.to(torch.float32) if cd == torch.float32 else rows
    if not compute_grad:
        return rows, student.new_empty(0)
    return rows, grad.to(student.dtype)


def kd_loss_topk_rows_ref(
    student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
):
    cd = _compute_dtype(student)
    z = student.to(cd)
    logq = torch.log_softmax(z / tau, dim=1)
    logp = torch.log_softmax(topk_logprobs.to(cd) / tau, dim=1)  # renormalised over the k entries
    p = logp.exp()
    div = torch.where(p > 0, p * (logp - logq.gather(1, topk_idx)), 0.0).sum(1)
    w_kd, w_ce = _weights(labels, alpha)
    rows = w_kd * tau * tau * div
    grad = logq.exp().scatter_add(1, topk_idx, -p) * (w_kd * tau)
    if labels is not None:
        valid = labels != ignore_index
        ce, ce_grad = _hard_label_terms(z, labels, ignore_index, valid)
        rows = torch.where(valid, rows + w_ce * ce, 0.0)
        grad = torch.where(valid[:, None], grad + w_ce * ce_grad, 0.0)
    rows = rows.to(torch.float32) if cd == torch.float32 else rows
    if not compute_grad:
        return rows, student.new_empty(0)
    return rows, grad.to(student.dtype)


register("kd_loss_rows", "reference", _DEVICES)(kd_loss_rows_ref)
register("kd_loss_topk_rows", "reference", _DEVICES)(kd_loss_topk_rows_ref)

# ---------------------------------------------------------------------------------------------
# Custom ops with autograd: the backward scales the gradient the forward produced
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("llmkern::kd_loss_rows", mutates_args=())
def _kd_loss_rows_op(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    tau: float,
    alpha: float,
    ignore_index: int,
    divergence: str,
    beta: float,
    compute_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if labels is not None:  # value checks run in the op: compiled graphs run them too
        check_labels_range(labels, student.shape[1], ignore_index)
    args = (student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad)
    return dispatch("kd_loss_rows", student.device, backend or None, *args)


@_kd_loss_rows_op.register_fake
def _(student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad, backend):
    rows = student.new_empty(student.shape[0], dtype=torch.float32)
    return rows, (student.new_empty(student.shape) if compute_grad else student.new_empty(0))


@torch.library.custom_op("llmkern::kd_loss_topk_rows", mutates_args=())
def _kd_loss_topk_rows_op(
    student: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_logprobs: torch.Tensor,
    labels: torch.Tensor | None,
    tau: float,
    alpha: float,
    ignore_index: int,
    compute_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    v = student.shape[1]
    if bool(((topk_idx < 0) | (topk_idx >= v)).any()):
        raise ValueError(f"topk_indices must be in [0, {v})")
    if labels is not None:
        check_labels_range(labels, v, ignore_index)
    args = (student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad)
    return dispatch("kd_loss_topk_rows", student.device, backend or None, *args)


@_kd_loss_topk_rows_op.register_fake
def _(student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad, backend):
    rows = student.new_empty(student.shape[0], dtype=torch.float32)
    return rows, (student.new_empty(student.shape) if compute_grad else student.new_empty(0))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_rows, _grad_grad):
    (grad,) = ctx.saved_tensors
    return (grad * grad_rows[:, None].to(grad.dtype),) + (None,) * (ctx.n_inputs - 1)


def _setup_dense(ctx, inputs, output):
    ctx.n_inputs = 10
    _setup_context(ctx, inputs, output)


def _setup_topk(ctx, inputs, output):
    ctx.n_inputs = 9
    _setup_context(ctx, inputs, output)


torch.library.register_autograd("llmkern::kd_loss_rows", _backward, setup_context=_setup_dense)
torch.library.register_autograd("llmkern::kd_loss_topk_rows", _backward, setup_context=_setup_topk)

# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def check_labels_range(labels, v: int, ignore_index: int) -> None:
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= v))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"labels must be in [0, {v}) or ignore_index={ignore_index}; "
            f"labels[{i}] = {int(labels[i])}"
        )


def check_kd_args(student, labels, temperature, alpha, ignore_index, reduction, beta):
    check_tensor("student_logits", student, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    tau = check_float_scalar("temperature", temperature, low=0.0, low_open=True)
    alpha = check_float_scalar("alpha", alpha, low=0.0, high=1.0)
    beta = check_float_scalar("beta", beta, low=0.0, high=1.0)
    check_choice("reduction", reduction, REDUCTIONS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if labels is not None:
        check_tensor("labels", labels, ndim=1, dtypes=(torch.int64, torch.int32))
        check_shape("labels", labels, (student.shape[0],))
        if not torch.compiler.is_compiling():  # traced graphs check in the op instead
            check_labels_range(labels, student.shape[1], ignore_index)
        labels = labels.long()
    return tau, alpha, beta, labels


def reduce_rows(rows, labels, ignore_index, reduction):
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    n_valid = rows.shape[0] if labels is None else (labels != ignore_index).sum()
    return total / torch.clamp(torch.as_tensor(n_valid, device=rows.device), min=1).to(rows.dtype)


def _wants_grad(student):
    return torch.is_grad_enabled() and student.requires_grad


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    divergence: str = "kl",
    beta: float = 0.5,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Hinton KD loss for logits [N, V] (see the module doc); differentiable in the student."""
    tau, alpha, beta, labels = check_kd_args(
        student_logits, labels, temperature, alpha, ignore_index, reduction, beta
    )
    check_tensor("teacher_logits", teacher_logits, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    n, v = student_logits.shape
    if teacher_logits.shape[0] != n or teacher_logits.shape[1] < v:
        raise ValueError(
            f"teacher_logits must have shape [{n}, V_t] with V_t >= V = {v}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    check_choice("divergence", divergence, DIVERGENCES)
    check_same_device(student_logits=student_logits, teacher_logits=teacher_logits, labels=labels)
    rows, _ = _kd_loss_rows_op(
        student_logits, teacher_logits.detach(), labels, tau, alpha, int(ignore_index),
        divergence, beta, _wants_grad(student_logits), backend or "",
    )  # fmt: skip
    return reduce_rows(rows, labels, ignore_index, reduction)


def kd_loss_topk(
    student_logits: torch.Tensor,
    topk_indices: torch.Tensor,
    topk_logprobs: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """KD from a sparse (offline) teacher: per row the top-k vocabulary indices and their
    log-probabilities; the teacher distribution is renormalised over those k entries."""
    tau, alpha, _, labels = check_kd_args(
        student_logits, labels, temperature, alpha, ignore_index, reduction, 0.5
    )
    n, v = student_logits.shape
    check_tensor("topk_indices", topk_indices, ndim=2, dtypes=(torch.int64,))
    if topk_indices.shape[0] != n or topk_indices.shape[1] > v:
        raise ValueError(
            f"topk_indices must have shape [{n}, k] with k <= {v}, got {tuple(topk_indices.shape)}"
        )
    check_tensor("topk_logprobs", topk_logprobs, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_shape("topk_logprobs", topk_logprobs, tuple(topk_indices.shape))
    check_same_device(student_logits=student_logits, topk_indices=topk_indices,
                      topk_logprobs=topk_logprobs, labels=labels)  # fmt: skip
    rows, _ = _kd_loss_topk_rows_op(
        student_logits, topk_indices, topk_logprobs.detach(), labels, tau, alpha,
        int(ignore_index), _wants_grad(student_logits), backend or "",
    )  # fmt: skip
    return reduce_rows(rows, labels, ignore_index, reduction)


def fused_linear_kd_loss_ref(
    student_hidden, student_head, teacher_hidden, teacher_head, labels=None, temperature=1.0,
    alpha=0.5, ignore_index=-100, reduction="mean", divergence="kl", beta=0.5,
):  # fmt: skip
    """The unfused composition: materialise both logits in float32 and call :func:`kd_loss`'s
    reference (autograd flows into student_hidden and student_head)."""
    zs = student_hidden.float() @ student_head.float().T
    zt = (teacher_hidden.float() @ teacher_head.float().T).detach()
    tau, alpha, beta, labels = check_kd_args(
        zs, labels, temperature, alpha, ignore_index, reduction, beta
    )
    # Differentiable formulation of the same loss through the reference's closed form.
    rows, grad = kd_loss_rows_ref(
        zs.detach(), zt, labels, tau, alpha, ignore_index, divergence, beta, True
    )
    rows = rows + (zs * grad).sum(1) - (zs.detach() * grad).sum(1)  # value unchanged, d/dzs = grad
    return reduce_rows(rows, labels, ignore_index, reduction)


def fused_linear_kd_loss(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    divergence: str = "kl",
    beta: float = 0.5,
    *,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """KD loss from hidden states and LM heads without materialising [N, V] logits.

    Not yet chunked: this is the reference composition until the fused form lands."""
    raise NotImplementedError("fused_linear_kd_loss: the chunked kernel is not implemented yet")
