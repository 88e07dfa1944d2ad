"""Fused KD loss rows (llmkern.ops.kd): per row the loss and, optionally, d loss / d student,
one program per row looping over the vocabulary in blocks, all math in float32.

With a = z / tau (student), b = t / tau (teacher, first V columns), q = softmax(a),
p = softmax(b):

- pass 1 keeps running (max, sum of exp) for a, b and, with labels and tau != 1, z (CE is at
  temperature 1; with tau == 1 it reuses a's sums and q, a third fewer exponentials),
  plus the cross term the divergence needs, rescaled whenever the running max moves:
  KL(p||q) = sum p (b - a) + lse(a) - lse(b) and KL(q||p) = sum q (a - b) + lse(b) - lse(a).
  The running sums use a shift of 0 while the max is still -inf, so -inf logits (teacher
  log-probabilities of impossible tokens) never produce inf - inf.
- JSD needs the normalised p and q inside its log, so it takes a second pass for its sums.
- the gradient pass recomputes q, p (and softmax(z)) per block and writes the gradient in the
  student's dtype. Ignored rows (label == ignore_index) skip the math and write zeros.

The top-k variant (teacher given as sorted top-k indices + log-probabilities) reads the k
entries instead of a teacher row; its gradient pass subtracts p at the top-k positions that fall
in each vocabulary block, found through per-block start offsets into the sorted indices.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmkern.triton.kernels.common import INTERPRET, next_pow2, rowmajor

_NEG_INF = tl.constexpr(float("-inf"))
# FLT_MIN written exactly: triton (3.6) types a float literal below 2**-126 as float64, and the
# rounded decimal 1.17549435e-38 is just below it, which silently made the JSD sums float64.
_FLT_MIN = tl.constexpr(2.0**-126)
KL, REVERSE_KL, JSD = 0, 1, 2
_DIVERGENCE_CODE = {"kl": KL, "reverse_kl": REVERSE_KL, "jsd": JSD}
# Under the interpreter: small blocks so the tests cross several of them.
MAX_BLOCK_V = 64 if INTERPRET else 4096
MAX_BLOCK_V_TOPK = 64 if INTERPRET else 2048
MAX_BLOCK_T = 16 if INTERPRET else 1024
BLOCK_HITS = 4  # top-k entries matched against a vocabulary block at a time


@triton.jit
def _log_mixture(logp, logq, p, q, beta):
    """log(beta p + (1 - beta) q) as the reference takes it: exactly log q or log p when one side
    is weightless, else floored at FLT_MIN so an underflowed mixture stays finite."""
    logm = tl.log(tl.maximum(beta * p + (1.0 - beta) * q, _FLT_MIN))
    logm = tl.where(beta == 0.0, logq, logm)
    return tl.where(beta == 1.0, logp, logm)


@triton.jit
def _online(m, s, x):
    """Fold block x (masked entries -inf) into a running max m and sum s = sum exp(x - m).
    Returns (m, s, exp(x - m), factor that rescales older sums to the new max)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    shift = tl.where(m_new == _NEG_INF, 0.0, m_new)
    e = tl.exp(x - shift)
    rescale = tl.exp(m - shift)
    return m_new, s * rescale + tl.sum(e, axis=0), e, rescale


@triton.jit
def _lse(m, s):
    return tl.where(m == _NEG_INF, 0.0, m) + tl.log(s)


@triton.jit
def _ce_grad(z, q, offs, lse_z, y, V, TAU_ONE: tl.constexpr):
    """d CE / d z = softmax(z) - onehot(y); softmax(z) is q when tau == 1. NaN for a label
    outside [0, V), as its CE."""
    if TAU_ONE:
        soft = q
    else:
        soft = tl.exp(z - lse_z)
    g = soft - (offs == y).to(tl.float32)
    return tl.where((y >= 0) & (y < V), g, float("nan"))


@triton.jit
def _ce(s_row, y, V, lse_a, mz, sz, TAU_ONE: tl.constexpr):
    """(CE of the row's label, lse(z)); lse(z) is lse(z / tau) when tau == 1. A label outside
    [0, V) (unchecked on the GPU) is not read: its CE is NaN."""
    if TAU_ONE:
        lse_z = lse_a
    else:
        lse_z = _lse(mz, sz)
    z_y = tl.load(s_row + y, mask=(y >= 0) & (y < V), other=float("nan")).to(tl.float32)
    return lse_z - z_y, lse_z


@triton.jit
def _kd_rows_kernel(
    s_ptr,
    t_ptr,
    y_ptr,
    rows_ptr,
    g_ptr,
    V,
    stride_s,
    stride_t,
    stride_g,
    inv_tau,
    loss_scale,
    grad_scale,
    w_ce,
    ignore_index,
    beta,
    HAS_LABELS: tl.constexpr,
    TAU_ONE: tl.constexpr,
    DIVERGENCE: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    t_row = t_ptr + row * stride_t
    g_row = g_ptr + row * stride_g
    lanes = tl.arange(0, BLOCK_V)
    valid = True
    y = 0
    if HAS_LABELS:
        y = tl.load(y_ptr + row)
        valid = y != ignore_index
    if valid:
        ninf = tl.full((), _NEG_INF, tl.float32)
        zero = tl.zeros((), tl.float32)
        ma, sa, mb, sb, mz, sz, cross = ninf, zero, ninf, zero, ninf, zero, zero
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + lanes
            z = tl.load(s_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
            t = tl.load(t_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
            a = z * inv_tau
            b = t * inv_tau
            ma, sa, ea, ra = _online(ma, sa, a)
            mb, sb, eb, rb = _online(mb, sb, b)
            if HAS_LABELS and not TAU_ONE:
                mz, sz, _ez, _rz = _online(mz, sz, z)
            if DIVERGENCE == 0:
                cross = cross * rb + tl.sum(tl.where(eb > 0.0, eb * (b - a), 0.0), axis=0)
            elif DIVERGENCE == 1:
                cross = cross * ra + tl.sum(tl.where(ea > 0.0, ea * (a - b), 0.0), axis=0)
        lse_a = _lse(ma, sa)
        lse_b = _lse(mb, sb)
        # A teacher row with NaN / +inf, or all -inf, has no finite log-sum: its KD term is NaN
        # (as the reference; the JSD sums below would otherwise drop its NaN terms).
        p_ok = (lse_b > _NEG_INF) & (lse_b < -_NEG_INF)
        if DIVERGENCE == 0:
            div = cross / sb + lse_a - lse_b
        elif DIVERGENCE == 1:
            div = cross / sa + lse_b - lse_a
        else:
            d_p, d_q = zero, zero
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + lanes
                z = tl.load(s_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
                t = tl.load(t_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
                logq = z * inv_tau - lse_a
                logp = t * inv_tau - lse_b
                q = tl.exp(logq)
                p = tl.exp(logp)
                logm = _log_mixture(logp, logq, p, q, beta)
                d_p += tl.sum(tl.where(p > 0.0, p * (logp - logm), 0.0), axis=0)
                d_q += tl.sum(tl.where(q > 0.0, q * (logq - logm), 0.0), axis=0)
            # A weightless side is left out, not multiplied by 0 (its sum may be inf).
            div = tl.where(beta > 0.0, beta * d_p, 0.0) + tl.where(
                beta < 1.0, (1.0 - beta) * d_q, 0.0
            )
        loss = loss_scale * tl.where(p_ok, div, float("nan"))
        lse_z = 0.0
        if HAS_LABELS:
            ce, lse_z = _ce(s_row, y, V, lse_a, mz, sz, TAU_ONE)
            loss += w_ce * ce
        tl.store(rows_ptr + row, loss)
        if GRAD:
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + lanes
                z = tl.load(s_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
                t = tl.load(t_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
                logq = z * inv_tau - lse_a
                logp = t * inv_tau - lse_b
                q = tl.exp(logq)
                if DIVERGENCE == 0:
                    g = q - tl.exp(logp)
                elif DIVERGENCE == 1:
                    g = q * (tl.where(q > 0.0, logq - logp, 0.0) - div)
                else:
                    logm = _log_mixture(logp, logq, tl.exp(logp), q, beta)
                    g = (1.0 - beta) * q * (tl.where(q > 0.0, logq - logm, 0.0) - d_q)
                    g = tl.where(beta < 1.0, g, 0.0)
                g = grad_scale * tl.where(p_ok, g, float("nan"))
                if HAS_LABELS:
                    g += w_ce * _ce_grad(z, q, offs, lse_z, y, V, TAU_ONE)
                tl.store(g_row + offs, g.to(g_ptr.dtype.element_ty), mask=offs < V)
    else:
        tl.store(rows_ptr + row, 0.0)
        if GRAD:
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + lanes
                tl.store(g_row + offs, tl.zeros((BLOCK_V,), g_ptr.dtype.element_ty), mask=offs < V)


@triton.jit
def _kd_topk_kernel(
    s_ptr,
    idx_ptr,
    lp_ptr,
    start_ptr,
    y_ptr,
    rows_ptr,
    g_ptr,
    V,
    KT,
    stride_s,
    stride_i,
    stride_l,
    stride_st,
    stride_g,
    inv_tau,
    loss_scale,
    grad_scale,
    w_ce,
    ignore_index,
    HAS_LABELS: tl.constexpr,
    TAU_ONE: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_HIT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    idx_row = idx_ptr + row * stride_i
    lp_row = lp_ptr + row * stride_l
    g_row = g_ptr + row * stride_g
    lanes = tl.arange(0, BLOCK_V)
    valid = True
    y = 0
    if HAS_LABELS:
        y = tl.load(y_ptr + row)
        valid = y != ignore_index
    if valid:
        ninf = tl.full((), _NEG_INF, tl.float32)
        zero = tl.zeros((), tl.float32)
        ma, sa, mz, sz = ninf, zero, ninf, zero
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + lanes
            z = tl.load(s_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
            ma, sa, _ea, _ra = _online(ma, sa, z * inv_tau)
            if HAS_LABELS and not TAU_ONE:
                mz, sz, _ez, _rz = _online(mz, sz, z)
        lse_a = _lse(ma, sa)
        # Teacher: softmax over the k log-probabilities / tau; KL(p||q) = sum p (b - a) + ...
        mb, sb, cross = ninf, zero, zero
        for j0 in range(0, KT, BLOCK_T):
            offs_j = j0 + tl.arange(0, BLOCK_T)
            ok = offs_j < KT
            b = tl.load(lp_row + offs_j, mask=ok, other=_NEG_INF).to(tl.float32) * inv_tau
            idx = tl.load(idx_row + offs_j, mask=ok, other=0)
            # An index outside [0, V) (unchecked on the GPU) is not read: the loss is NaN.
            known = (idx >= 0) & (idx < V)
            a = tl.load(s_row + idx, mask=ok & known, other=0.0).to(tl.float32) * inv_tau
            a = tl.where(ok & ~known, float("nan"), a)
            mb, sb, eb, rb = _online(mb, sb, b)
            cross = cross * rb + tl.sum(tl.where((eb > 0.0) | (a != a), eb * (b - a), 0.0), axis=0)
        lse_b = _lse(mb, sb)
        loss = loss_scale * (cross / sb + lse_a - lse_b)
        lse_z = 0.0
        if HAS_LABELS:
            ce, lse_z = _ce(s_row, y, V, lse_a, mz, sz, TAU_ONE)
            loss += w_ce * ce
        tl.store(rows_ptr + row, loss)
        if GRAD:
            hits = tl.arange(0, BLOCK_HIT)
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + lanes
                z = tl.load(s_row + offs, mask=offs < V, other=_NEG_INF).to(tl.float32)
                # p at the top-k positions inside this block (duplicates add up).
                p = tl.zeros((BLOCK_V,), tl.float32)
                lo = tl.load(start_ptr + row * stride_st + v0 // BLOCK_V)
                hi = tl.load(start_ptr + row * stride_st + v0 // BLOCK_V + 1)
                for j0 in range(lo, hi, BLOCK_HIT):
                    offs_j = j0 + hits
                    ok = offs_j < hi
                    idx = tl.load(idx_row + offs_j, mask=ok, other=-1)
                    b = tl.load(lp_row + offs_j, mask=ok, other=_NEG_INF).to(tl.float32)
                    p_j = tl.exp(b * inv_tau - lse_b)
                    hit = offs[:, None] == idx[None, :]
                    p += tl.sum(tl.where(hit, p_j[None, :], 0.0), axis=1)
                q = tl.exp(z * inv_tau - lse_a)
                g = grad_scale * (q - p)
                if HAS_LABELS:
                    g += w_ce * _ce_grad(z, q, offs, lse_z, y, V, TAU_ONE)
                tl.store(g_row + offs, g.to(g_ptr.dtype.element_ty), mask=offs < V)
    else:
        tl.store(rows_ptr + row, 0.0)
        if GRAD:
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + lanes
                tl.store(g_row + offs, tl.zeros((BLOCK_V,), g_ptr.dtype.element_ty), mask=offs < V)


def _weights(labels, tau, alpha):
    """(loss scale of the divergence, its gradient scale, CE weight): tau^2 scaling, and with
    labels the alpha / (1 - alpha) mix."""
    w_kd, w_ce = (alpha, 1.0 - alpha) if labels is not None else (1.0, 0.0)
    return w_kd * tau * tau, w_kd * tau, w_ce


def _outputs(student, compute_grad):
    n = student.shape[0]
    rows = torch.empty(n, dtype=torch.float32, device=student.device)
    grad = torch.empty_like(student) if compute_grad else student.new_empty(0)
    return rows, grad


def _warps(block):
    return 4 if block <= 1024 else 8


def kd_loss_rows(
    student, teacher, labels, tau, alpha, ignore_index, divergence, beta, compute_grad
):
    student, teacher = rowmajor(student), rowmajor(teacher)
    n, v = student.shape
    rows, grad = _outputs(student, compute_grad)
    loss_scale, grad_scale, w_ce = _weights(labels, tau, alpha)
    block = min(next_pow2(v), MAX_BLOCK_V)
    _kd_rows_kernel[(n,)](
        student, teacher, labels if labels is not None else rows, rows, grad, v,
        student.stride(0), teacher.stride(0), grad.stride(0) if compute_grad else 0,
        1.0 / tau, loss_scale, grad_scale, w_ce, ignore_index, beta,
        HAS_LABELS=labels is not None,
        TAU_ONE=tau == 1.0, DIVERGENCE=_DIVERGENCE_CODE[divergence],
        GRAD=compute_grad, BLOCK_V=block, num_warps=_warps(block),
    )  # fmt: skip
    return rows, grad


def kd_loss_topk_rows(
    student, topk_idx, topk_logprobs, labels, tau, alpha, ignore_index, compute_grad
):
    student = rowmajor(student)
    n, v = student.shape
    k = topk_idx.shape[1]
    rows, grad = _outputs(student, compute_grad)
    loss_scale, grad_scale, w_ce = _weights(labels, tau, alpha)
    block = min(next_pow2(v), MAX_BLOCK_V_TOPK)
    # Sorted indices: the entries falling in vocabulary block i are starts[i]..starts[i+1].
    # The kernel reads index and log-prob rows with unit column stride; sort keeps its input's
    # layout, so sort a row-major copy.
    topk_idx, order = topk_idx.contiguous().sort(dim=1)
    topk_logprobs = topk_logprobs.gather(1, order).contiguous()
    bounds = torch.arange(0, triton.cdiv(v, block) + 1, device=student.device) * block
    starts = torch.searchsorted(topk_idx, bounds.expand(n, -1).contiguous(), out_int32=True)
    _kd_topk_kernel[(n,)](
        student, topk_idx, topk_logprobs, starts, labels if labels is not None else rows, rows,
        grad, v, k, student.stride(0), topk_idx.stride(0), topk_logprobs.stride(0),
        starts.stride(0), grad.stride(0) if compute_grad else 0,
        1.0 / tau, loss_scale, grad_scale, w_ce, ignore_index,
        HAS_LABELS=labels is not None,
        TAU_ONE=tau == 1.0, GRAD=compute_grad, BLOCK_V=block,
        BLOCK_T=min(next_pow2(k), MAX_BLOCK_T), BLOCK_HIT=BLOCK_HITS, num_warps=_warps(block),
    )  # fmt: skip
    return rows, grad
