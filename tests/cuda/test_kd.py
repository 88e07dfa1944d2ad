"""CUDA C++ KD-loss row kernels (backend="cuda") against the reference, on a CUDA device.

The row op is called directly, so both outputs are compared: per-row losses (float32) and the
logits gradient (student dtype). Covers the three divergences, labels with ignore_index,
alpha at 0 / 1, no labels, a wider teacher vocabulary, bf16 / fp16 / fp32 mixes, vocabularies
that are not multiples of the vector width (scalar path), strided rows, -inf teacher entries,
and the top-k teacher with duplicate indices and k above the shared-memory cache.
"""

from __future__ import annotations

import pytest
import torch

from llmkern.backends import kernels
from llmkern.ops import kd as kd_ops

pytestmark = pytest.mark.gpu

DEV = "cuda"
# |grad - ref| <= GRAD_TOL * max|ref| + 1e-7 per student dtype (the gradient is rounded once).
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def test_cuda_kernels_registered():
    for op in ("kd_loss_rows", "kd_loss_topk_rows"):
        assert "cuda" in kernels(op), f"no cuda kernel registered for {op}"


def _rows_op(backend, student, teacher, labels, tau, alpha, divergence, beta=0.5):
    return torch.ops.llmkern.kd_loss_rows(
        student, teacher, labels, tau, alpha, -100, divergence, beta, True, backend
    )


def _compare(got, ref):
    (rows, grad), (rows_ref, grad_ref) = got, ref
    torch.testing.assert_close(rows, rows_ref, rtol=2e-4, atol=2e-4)
    assert grad.dtype == grad_ref.dtype and grad.shape == grad_ref.shape
    diff = (grad.float() - grad_ref.float()).abs().max().item()
    bound = GRAD_TOL[grad.dtype] * grad_ref.float().abs().max().item() + 1e-7
    assert diff <= bound, f"grad max |diff| {diff} > {bound}"


def _logits(n, v, dtype, scale=3.0):
    return (torch.randn(n, v, device=DEV) * scale).to(dtype)


def _labels(n, v):
    y = torch.randint(0, v, (n,), device=DEV)
    y[::3] = -100  # ignored rows
    return y


DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float16),
]


@pytest.mark.parametrize("s_dtype,t_dtype", DTYPE_PAIRS, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("divergence", kd_ops.DIVERGENCES)
@pytest.mark.parametrize("v", [7, 1000, 32000, 50257])
def test_kd_rows_matches_reference(v, divergence, s_dtype, t_dtype):
    n = 9
    student, teacher = _logits(n, v, s_dtype), _logits(n, v, t_dtype)
    labels = _labels(n, v)
    args = (student, teacher, labels, 2.0, 0.3, divergence)
    _compare(_rows_op("cuda", *args), _rows_op("reference", *args))


@pytest.mark.parametrize("divergence", kd_ops.DIVERGENCES)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("tau", [0.5, 4.0])
def test_kd_rows_weights_and_temperature(divergence, alpha, tau):
    student, teacher = _logits(5, 4096, torch.float32), _logits(5, 4096, torch.float32)
    args = (student, teacher, _labels(5, 4096), tau, alpha, divergence, 0.2)
    _compare(_rows_op("cuda", *args), _rows_op("reference", *args))


@pytest.mark.parametrize("divergence", kd_ops.DIVERGENCES)
def test_kd_rows_without_labels_and_wider_teacher(divergence):
    student = _logits(6, 1003, torch.bfloat16)
    teacher = _logits(6, 1003 + 29, torch.bfloat16)  # extra teacher entries are dropped
    args = (student, teacher, None, 1.0, 0.5, divergence)
    _compare(_rows_op("cuda", *args), _rows_op("reference", *args))


def test_kd_rows_strided_inputs_and_log_prob_teacher():
    big_s = _logits(7, 3000, torch.float32)
    student = big_s[:, 100:2148]  # row stride 3000, aligned start: vector path with ld
    teacher = torch.log_softmax(_logits(7, 2048, torch.float32), dim=1)
    teacher[:, ::5] = float("-inf")  # log-probabilities with impossible tokens
    for divergence in ("kl", "jsd"):
        args = (student, teacher, _labels(7, 2048), 1.5, 0.5, divergence)
        _compare(_rows_op("cuda", *args), _rows_op("reference", *args))


def test_kd_rows_public_loss_and_backward():
    student = _logits(12, 5000, torch.bfloat16).requires_grad_()
    teacher, labels = _logits(12, 5000, torch.bfloat16), _labels(12, 5000)
    losses, grads = [], []
    for backend in ("cuda", "reference"):
        student.grad = None
        loss = kd_ops.kd_loss(student, teacher, labels, 2.0, 0.5, backend=backend)
        loss.backward()
        losses.append(loss.detach())
        grads.append(student.grad.clone())
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(grads[0].float(), grads[1].float(), rtol=2e-2, atol=1e-6)


def _topk_op(backend, student, idx, logprobs, labels, tau, alpha):
    return torch.ops.llmkern.kd_loss_topk_rows(
        student, idx, logprobs, labels, tau, alpha, -100, True, backend
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v,k", [(7, 1), (1000, 5), (32000, 64), (5001, 3000)])
def test_kd_topk_matches_reference(v, k, dtype):
    n = 6
    student = _logits(n, v, dtype)
    teacher = torch.log_softmax(torch.randn(n, v, device=DEV) * 3, dim=1)
    logprobs, idx = teacher.topk(k, dim=1)
    args = (student, idx, logprobs, _labels(n, v), 2.0, 0.4)
    _compare(_topk_op("cuda", *args), _topk_op("reference", *args))


def test_kd_topk_duplicate_indices_and_no_labels():
    student = _logits(4, 300, torch.float32)
    idx = torch.randint(0, 300, (4, 40), device=DEV)
    idx[:, 1] = idx[:, 0]  # duplicates: scatter_add sums their probabilities
    logprobs = torch.randn(4, 40, device=DEV)
    args = (student, idx, logprobs, None, 1.0, 0.5)
    _compare(_topk_op("cuda", *args), _topk_op("reference", *args))


def test_unchecked_bad_labels_and_indices_give_nan_not_stray_reads():
    """Without LLMKERN_DEBUG_CHECKS the labels are not read back on the GPU: the kernel must
    not index with a bad one (compute-sanitizer would see it) and marks the row NaN."""
    student = torch.randn(4, 300, device=DEV, dtype=torch.bfloat16)
    teacher = torch.randn(4, 300, device=DEV, dtype=torch.bfloat16)
    labels = torch.tensor([5, 300, -100, -3], device=DEV)
    for alpha in (0.5, 1.0):
        rows, grad = _rows_op("cuda", student, teacher, labels, 2.0, alpha, "kl")
        assert rows[[1, 3]].isnan().all() and grad[[1, 3]].isnan().all()
        assert torch.isfinite(rows[0]) and rows[2] == 0 and not grad[2].any()
    idx = torch.randint(0, 300, (4, 16), device=DEV)
    idx[2, 3] = 1 << 40
    lp = torch.randn(4, 16, device=DEV).log_softmax(1)
    rows, _ = torch.ops.llmkern.kd_loss_topk_rows(student, idx, lp, None, 1.0, 0.5, -100, True,
                                                  "cuda")  # fmt: skip
    assert rows[2].isnan() and torch.isfinite(rows[[0, 1, 3]]).all()
