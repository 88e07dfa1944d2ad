"""Knowledge-distillation losses (Hinton et al.): temperature-softened divergence to a teacher plus
hard-label cross-entropy, with the logits gradient produced in the same pass.

For student logits z [N, V], teacher logits v [N, V_t] (V_t >= V), labels y [N], temperature
tau > 0, alpha in [0, 1]; p = softmax(v[:, :V] / tau) (teacher entries beyond the student's
vocabulary are dropped and the rest renormalised), q = softmax(z / tau):

    row_loss = alpha * tau^2 * D(p, q) + (1 - alpha) * CE(z, y)     (0 for ignored rows)

with D = KL(p || q) (``"kl"``), KL(q || p) (``"reverse_kl"``) or the generalised
Jensen-Shannon divergence ``beta * KL(p || M) + (1 - beta) * KL(q || M)``, M = beta p + (1-beta) q
(``"jsd"``). With ``labels=None`` there is no CE term, every row counts and the KD term has
weight 1 (alpha is not used). A teacher row that defines no distribution (a NaN or +inf entry,
or every entry -inf) gives a NaN KD term, hence a NaN row loss and gradient, on every backend:
never a silently dropped term (entries at -inf among finite ones are fine: probability 0). When
the KD term has weight 0 (``alpha=0`` with labels) the teacher is not read. The teacher may be
given as logits or as log-probabilities: both
give the same p, since softmax is shift-invariant per row. Reductions: ``mean`` over valid rows
(0 when there are none), ``sum``, ``none`` (per row). All arithmetic in float32 (float64 inputs
stay float64); the loss is float32.

Backend kernel contract, op ``kd_loss_rows``: (student, teacher, labels|None, tau, alpha,
ignore_index, divergence, beta, compute_grad) -> (row_loss float32 [N], grad) where grad is
d(sum of row_loss)/d student in the student's dtype, [N, V], or an empty tensor when
``compute_grad`` is False. ``kd_loss_topk_rows`` is the same for a sparse teacher given as top-k
(indices [N, k], log-probabilities [N, k]); only ``"kl"`` is defined there (p is renormalised
over the k entries).

Autograd: the forward computes the gradient when the student requires it, the backward scales
it in place by the upstream gradient (no second [N, V] buffer; retaining the graph and calling
backward twice raises instead of reusing scaled values). ``llmkern::fused_linear_kd_loss``
(:func:`fused_linear_kd_loss`) runs ``kd_loss_rows`` chunk by chunk on logits computed from
hidden states and LM heads, so every backend of ``kd_loss_rows`` serves it too.
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
    values_checked,
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


def undefined_teacher_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of teacher logits (or log-probabilities) that define no distribution: one entry NaN
    or +inf, or every entry -inf. Their KD term is NaN on every backend (see the module doc)."""
    return torch.isnan(t).any(1) | torch.isposinf(t).any(1) | torch.isneginf(t).all(1)


def _kd_part(w_kd, tau, div, grad_s, teacher):
    """The weighted KD term per row and its gradient; NaN on undefined teacher rows, and left
    out (0, the teacher not read) when its weight is 0."""
    if w_kd == 0:
        return torch.zeros_like(div), torch.zeros_like(grad_s)
    bad = undefined_teacher_rows(teacher)
    rows = torch.where(bad, math.nan, w_kd * tau * tau * div)
    grad = torch.where(bad[:, None], math.nan, w_kd * tau * grad_s)  # tau^2 * d/dz(z / tau)
    return rows, grad


def _hard_label_terms(z, labels, ignore_index, valid):
    """CE per row and its gradient d CE / d z (zero rows where invalid). A label outside
    [0, V) (possible on the GPU, where check_label_values does not run) is never indexed: its
    row gets NaN, as in the GPU kernels."""
    logq1 = torch.log_softmax(z, dim=1)
    unknown = valid & ((labels < 0) | (labels >= z.shape[1]))
    safe = torch.where(valid & ~unknown, labels, 0)
    ce = -logq1.gather(1, safe[:, None])[:, 0]
    grad = logq1.exp()
    grad[torch.arange(z.shape[0], device=z.device), safe] -= 1.0
    return ce.masked_fill(unknown, math.nan), grad.masked_fill(unknown[:, None], math.nan)


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
    rows, grad = _kd_part(w_kd, tau, div, grad_s, teacher[:, :v])
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
    # An index outside [0, V) (unchecked on the GPU) is never read: its row's loss is NaN.
    known = (topk_idx >= 0) & (topk_idx < z.shape[1])
    topk_idx = torch.where(known, topk_idx, 0)
    div = torch.where(p > 0, p * (logp - logq.gather(1, topk_idx)), 0.0).sum(1)
    div = div.masked_fill(~known.all(1), math.nan)
    w_kd, w_ce = _weights(labels, alpha)
    grad_s = logq.exp().scatter_add(1, topk_idx, -p)
    rows, grad = _kd_part(w_kd, tau, div, grad_s, topk_logprobs)
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
    check_label_values(labels, student.shape[1], ignore_index)
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
    check_label_values(labels, student.shape[1], ignore_index)
    if values_checked(topk_idx) and bool(((topk_idx < 0) | (topk_idx >= student.shape[1])).any()):
        raise ValueError(f"topk_indices must be in [0, {student.shape[1]})")
    args = (student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad)
    rows, grad = dispatch("kd_loss_topk_rows", student.device, backend or None, *args)
    if labels is None or alpha > 0:  # undefined teacher rows: NaN on every backend (cheap: [N, k])
        bad = undefined_teacher_rows(topk_logprobs)
        if labels is not None:
            bad &= labels != ignore_index
        rows.masked_fill_(bad, math.nan)
        if grad.numel():
            grad.masked_fill_(bad[:, None], math.nan)
    return rows, grad


@_kd_loss_topk_rows_op.register_fake
def _(student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad, backend):
    rows = student.new_empty(student.shape[0], dtype=torch.float32)
    return rows, (student.new_empty(student.shape) if compute_grad else student.new_empty(0))


def _setup_rows(ctx, inputs, output):
    ctx.n_inputs = len(inputs)
    ctx.set_materialize_grads(False)  # no [N, V] zeros for the unused grad of output[1]
    ctx.save_for_backward(output[1])


def _row_scale(grad_rows, dtype):
    """The upstream per-row gradient as a multiplier of a [N, V] gradient of ``dtype`` that
    keeps the in-place product in that dtype (a float32 [N, 1] factor would make a 16-bit
    product go through a float32 [N, V] temporary). For "mean"/"sum" the upstream is one scalar
    broadcast over the rows: it stays a float32 0-dim factor, exact."""
    if grad_rows.stride(0) == 0:
        return grad_rows[0]
    return grad_rows[:, None].to(dtype)


def _backward_rows(ctx, grad_rows, _grad_grad):
    # The forward's gradient is scaled in place: no second [N, V] buffer, and autograd can hand
    # it to student.grad without a copy (the saved reference is released before accumulation).
    # A second backward through the same graph fails the saved tensor's version check
    # instead of reading the scaled values.
    if grad_rows is None:
        return (None,) * ctx.n_inputs
    (grad,) = ctx.saved_tensors
    return (grad.mul_(_row_scale(grad_rows, grad.dtype)),) + (None,) * (ctx.n_inputs - 1)


torch.library.register_autograd("llmkern::kd_loss_rows", _backward_rows, setup_context=_setup_rows)
torch.library.register_autograd(
    "llmkern::kd_loss_topk_rows", _backward_rows, setup_context=_setup_rows
)

# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def check_kd_args(student, labels, temperature, alpha, ignore_index, reduction, beta):
    check_tensor("student_logits", student, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    return check_kd_options(
        student.shape[0], labels, temperature, alpha, ignore_index, reduction, beta
    )


def check_kd_options(n, labels, temperature, alpha, ignore_index, reduction, beta):
    """Checks the options shared by every KD loss; returns (tau, alpha, beta, labels as int64)."""
    tau = check_float_scalar("temperature", temperature, low=0.0, low_open=True)
    alpha = check_float_scalar("alpha", alpha, low=0.0, high=1.0)
    beta = check_float_scalar("beta", beta, low=0.0, high=1.0)
    check_choice("reduction", reduction, REDUCTIONS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if labels is not None:
        check_tensor("labels", labels, ndim=1, dtypes=(torch.int64, torch.int32))
        check_shape("labels", labels, (n,))
        labels = labels.long().contiguous()  # any stride (e.g. a column, expanded): kernels index
    return tau, alpha, beta, labels


def check_label_values(labels, v, ignore_index):
    """Labels in [0, V) or ignore_index. A data-dependent check, so it runs inside the custom
    ops (before any kernel), where torch.compile sees no graph break; on GPU tensors only with
    LLMKERN_DEBUG_CHECKS=1 (values_checked): without it a bad label's row gets a NaN loss."""
    if labels is None or not values_checked(labels):
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= v))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"labels must be in [0, {v}) or ignore_index={ignore_index}; "
            f"labels[{i}] = {int(labels[i])}"
        )


def reduce_rows(rows, labels, ignore_index, reduction):
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    n_valid = rows.shape[0] if labels is None else (labels != ignore_index).sum()
    return total / torch.clamp(torch.as_tensor(n_valid, device=rows.device), min=1).to(rows.dtype)


def _teacher_unused(labels, alpha) -> bool:
    """alpha = 0 with labels: the KD term has weight 0, so no kernel may read the teacher (an
    undefined teacher row must not turn 0 x NaN into a NaN loss): the calls below hand the
    kernels a harmless stand-in (the student itself, or zeros for a top-k teacher)."""
    return labels is not None and alpha == 0.0


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
    if _teacher_unused(labels, alpha):
        teacher_logits = student_logits
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
    if _teacher_unused(labels, alpha):
        topk_logprobs = torch.zeros_like(topk_logprobs)
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
    check_label_values(labels, zs.shape[1], ignore_index)
    # Differentiable formulation of the same loss through the reference's closed form.
    rows, grad = kd_loss_rows_ref(
        zs.detach(), zt, labels, tau, alpha, ignore_index, divergence, beta, True
    )
    rows = rows + (zs * grad).sum(1) - (zs.detach() * grad).sum(1)  # value unchanged, d/dzs = grad
    return reduce_rows(rows, labels, ignore_index, reduction)


# ---------------------------------------------------------------------------------------------
# Fused linear + KD loss: logits chunk by chunk, never [N, V] at once
# ---------------------------------------------------------------------------------------------

# Token rows per chunk are chosen so that the float32 student and teacher logits of one chunk
# take about this many bytes (the kernel's gradient of the chunk adds one more student part).
CHUNK_LOGITS_BYTES = 128 * 2**20
# Heads stored in 16-bit are converted to float32 this many bytes at a time (vocabulary blocks).
HEAD_BLOCK_BYTES = 32 * 2**20


def _chunk_rows(n, v, vt, chunk_size):
    if chunk_size:
        return min(n, chunk_size)
    return max(1, min(n, CHUNK_LOGITS_BYTES // (4 * (v + vt))))


def _vocab_blocks(head):
    """Row ranges of ``head`` to convert to float32 at a time (the whole head when it is
    float32 already: no copy)."""
    v = head.shape[0]
    if head.dtype == torch.float32:
        return [(0, v)]
    step = max(1, HEAD_BLOCK_BYTES // (4 * head.shape[1]))
    return [(a, min(v, a + step)) for a in range(0, v, step)]


def _logits(h32, head, out):
    """out[C, V] = h32 @ head.T with float32 inputs and accumulation."""
    for a, b in _vocab_blocks(head):
        if a == 0 and b == head.shape[0]:
            torch.mm(h32, head.float().T, out=out)
        else:
            out[:, a:b] = h32 @ head[a:b].float().T
    return out


def _fused_linear_kd_forward(
    student_hidden, student_head, teacher_hidden, teacher_head, labels, tau, alpha, ignore_index,
    divergence, beta, row_scale, grad_scale, chunk_size, grad_hidden, grad_head, backend,
):  # fmt: skip
    """Row losses [N] and, when asked, the gradients of sum_i s_i row_loss_i with respect to the
    student hidden states and head (s_i = row_scale[i], or grad_scale when row_scale is None)."""
    n = student_hidden.shape[0]
    v, vt = student_head.shape[0], teacher_head.shape[0]
    rows_per_chunk = _chunk_rows(n, v, vt, chunk_size)
    compute_grad = grad_hidden or grad_head
    rows = student_hidden.new_empty(n, dtype=torch.float32)
    gh = torch.empty_like(student_hidden) if grad_hidden else student_hidden.new_empty(0)
    # The head's gradient sums over every chunk: accumulate it in float32.
    gw = (
        torch.zeros(student_head.shape, dtype=torch.float32, device=student_head.device)
        if grad_head
        else None
    )
    zs_buf = student_hidden.new_empty((rows_per_chunk, v), dtype=torch.float32)
    zt_buf = student_hidden.new_empty((rows_per_chunk, vt), dtype=torch.float32)
    for c0 in range(0, n, rows_per_chunk):
        c1 = min(n, c0 + rows_per_chunk)
        h = student_hidden[c0:c1].float()
        zs = _logits(h, student_head, zs_buf[: c1 - c0])
        lab = None if labels is None else labels[c0:c1]
        if _teacher_unused(labels, alpha):  # no teacher GEMM either
            zt = zs
        else:
            zt = _logits(teacher_hidden[c0:c1].float(), teacher_head, zt_buf[: c1 - c0])
        r, g = dispatch("kd_loss_rows", zs.device, backend or None, zs, zt, lab, tau, alpha,
                        ignore_index, divergence, beta, compute_grad)  # fmt: skip
        rows[c0:c1] = r
        if not compute_grad:
            continue
        g.mul_(row_scale[c0:c1, None] if row_scale is not None else grad_scale)
        if grad_hidden:
            if student_head.dtype == torch.float32:
                gh[c0:c1] = g @ student_head
            else:
                acc = torch.zeros_like(h)
                for a, b in _vocab_blocks(student_head):
                    acc.addmm_(g[:, a:b], student_head[a:b].float())
                gh[c0:c1] = acc
        if grad_head:
            gw.addmm_(g.T, h)
    if grad_head:
        gw = gw.to(student_head.dtype)
    else:
        gw = student_head.new_empty(0)
    return rows, gh, gw


def _mean_scale(labels, n, ignore_index):
    """1 / (number of rows that count, at least 1): a float, or without host synchronisation a
    float32 0-dim tensor on the labels' device."""
    if labels is None:
        return 1.0 / max(1, n)
    return 1.0 / (labels != ignore_index).sum().clamp(min=1).float()


@torch.library.custom_op("llmkern::fused_linear_kd_loss", mutates_args=())
def _fused_linear_kd_op(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    labels: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    tau: float,
    alpha: float,
    ignore_index: int,
    divergence: str,
    beta: float,
    reduction: str,
    chunk_size: int,
    grad_hidden: bool,
    grad_head: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d loss/d student_hidden, d loss/d student_head); loss is reduced for "mean"/"sum"
    and per row for "none". With ``row_scale`` the gradients are those of
    sum_i row_scale[i] * row_loss_i (the backward of "none")."""
    check_label_values(labels, student_head.shape[0], ignore_index)
    n = student_hidden.shape[0]
    grad_scale = 1.0
    if reduction == "mean":
        grad_scale = _mean_scale(labels, n, ignore_index)
    rows, gh, gw = _fused_linear_kd_forward(
        student_hidden, student_head, teacher_hidden, teacher_head, labels, tau, alpha,
        ignore_index, divergence, beta, row_scale, grad_scale, chunk_size, grad_hidden,
        grad_head, backend,
    )  # fmt: skip
    if reduction == "none":
        return rows, gh, gw
    total = rows.sum()
    return (total * grad_scale if reduction == "mean" else total), gh, gw


@_fused_linear_kd_op.register_fake
def _(student_hidden, student_head, teacher_hidden, teacher_head, labels, row_scale, tau, alpha,
      ignore_index, divergence, beta, reduction, chunk_size, grad_hidden, grad_head, backend):  # fmt: skip
    n = student_hidden.shape[0]
    loss = student_hidden.new_empty((n,) if reduction == "none" else (), dtype=torch.float32)
    gh = student_hidden.new_empty(student_hidden.shape if grad_hidden else (0,))
    gw = student_head.new_empty(student_head.shape if grad_head else (0,))
    return loss, gh, gw


def _setup_fused_linear(ctx, inputs, output):
    (hs, ws, ht, wt, labels, _, tau, alpha, ii, div, beta, reduction, chunk, gh, gw, be) = inputs
    ctx.set_materialize_grads(False)
    ctx.reduction = reduction
    ctx.args = (tau, alpha, ii, div, beta, "none", chunk)
    ctx.backend = be
    if reduction == "none":  # the per-row upstream gradient is needed: recompute in backward
        ctx.save_for_backward(hs, ws, ht, wt, labels)
    else:  # gradients computed in the forward, scaled by the scalar upstream gradient
        ctx.save_for_backward(output[1], output[2])


def _backward_fused_linear(ctx, grad_loss, _g1, _g2):
    needs = ctx.needs_input_grad[:2]
    if grad_loss is None or not any(needs):
        return (None,) * 16
    if ctx.reduction == "none":
        hs, ws, ht, wt, labels = ctx.saved_tensors
        _, gh, gw = _fused_linear_kd_op(
            hs, ws, ht, wt, labels, grad_loss.float().contiguous(), *ctx.args, *needs, ctx.backend,
        )  # fmt: skip
    else:
        gh, gw = ctx.saved_tensors  # scaled in place, as in _backward_rows
        gh, gw = gh.mul_(grad_loss), gw.mul_(grad_loss)
    return (gh if needs[0] else None, gw if needs[1] else None) + (None,) * 14


torch.library.register_autograd(
    "llmkern::fused_linear_kd_loss", _backward_fused_linear, setup_context=_setup_fused_linear
)


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
    """KD loss of :func:`kd_loss` on the logits ``student_hidden @ student_head.T`` [N, V] and
    ``teacher_hidden @ teacher_head.T`` [N, V_t >= V], without materialising them.

    Token rows are processed ``chunk_size`` at a time (default: as many as fit
    :data:`CHUNK_LOGITS_BYTES` of float32 logits); each chunk's logits are computed with float32
    accumulation (16-bit heads are converted a vocabulary block at a time), the
    ``kd_loss_rows`` kernel of the selected backend writes their gradient, and the gradients of
    the student hidden states and head are accumulated right away (the head's in float32). Extra
    memory is O(chunk x V), never O(N x V). For "mean"/"sum" the gradients are computed during
    the forward (no second pass); for "none" the backward recomputes the chunks with the
    per-row upstream gradient. The teacher gets no gradient."""
    for name, t in (("student_hidden", student_hidden), ("student_head", student_head),
                    ("teacher_hidden", teacher_hidden), ("teacher_head", teacher_head)):  # fmt: skip
        check_tensor(name, t, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,))
    n, hs = student_hidden.shape
    v, ht = student_head.shape[0], teacher_hidden.shape[1]
    check_shape("student_head", student_head, (v, hs))
    tau, alpha, beta, labels = check_kd_options(
        n, labels, temperature, alpha, ignore_index, reduction, beta
    )
    if teacher_hidden.shape[0] != n:
        raise ValueError(
            f"teacher_hidden must have {n} rows like student_hidden, got {tuple(teacher_hidden.shape)}"
        )
    if teacher_head.shape[1] != ht or teacher_head.shape[0] < v:
        raise ValueError(
            f"teacher_head must have shape [V_t >= {v}, {ht}], got {tuple(teacher_head.shape)}"
        )
    check_choice("divergence", divergence, DIVERGENCES)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    check_same_device(student_hidden=student_hidden, student_head=student_head,
                      teacher_hidden=teacher_hidden, teacher_head=teacher_head, labels=labels)  # fmt: skip
    grad_on = torch.is_grad_enabled()
    loss, _, _ = _fused_linear_kd_op(
        student_hidden, student_head, teacher_hidden.detach(), teacher_head.detach(), labels, None,
        tau, alpha, int(ignore_index), divergence, beta, reduction, chunk_size or 0,
        grad_on and student_hidden.requires_grad and reduction != "none",
        grad_on and student_head.requires_grad and reduction != "none", backend or "",
    )  # fmt: skip
    return loss
