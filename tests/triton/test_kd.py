"""Triton KD loss kernels vs the reference (loss rows and gradients): under TRITON_INTERPRET=1 on
CPU tensors (small vocabularies, several blocks), and on CUDA tensors at real sizes (``gpu``)."""

import pytest
import torch

import llmkern.ops as ops
from llmkern.backends import BackendUnavailableError

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on masked lanes

RTOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}
N, V, V_TEACHER = 5, 150, 157  # 150 = 2 full interpreter blocks of 64 + a tail


def labels_with_ignored(n, v, device="cpu"):
    labels = torch.randint(0, v, (n,), device=device)
    labels[1] = -100
    return labels


def loss_and_grad(fn, student, *args, **kwargs):
    """Per-row loss and d(weighted sum of rows)/d student through autograd."""
    s = student.detach().clone().requires_grad_(True)
    rows = fn(s, *args, reduction="none", **kwargs)
    weights = torch.linspace(0.5, 1.5, rows.shape[0], device=rows.device)
    (rows * weights).sum().backward()
    return rows.detach(), s.grad


def check(fn, student, *args, **kwargs):
    rows, grad = loss_and_grad(fn, student, *args, backend="triton", **kwargs)
    rows_ref, grad_ref = loss_and_grad(fn, student, *args, backend="reference", **kwargs)
    atol = 2e-5 * (1.0 + rows_ref.abs().max().item())
    torch.testing.assert_close(rows, rows_ref, rtol=2e-5, atol=atol)
    assert grad.dtype == student.dtype
    rtol = RTOL[student.dtype]
    scale = grad_ref.float().abs().max().item()
    torch.testing.assert_close(grad.float(), grad_ref.float(), rtol=rtol, atol=rtol * scale + 1e-7)
    return rows, grad


@pytest.mark.parametrize("tau", [1.0, 2.5])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_kd_loss(divergence, with_labels, tau):
    student = torch.randn(N, V) * 3
    teacher = torch.randn(N, V_TEACHER) * 3  # wider teacher: extra columns are dropped
    labels = labels_with_ignored(N, V) if with_labels else None
    rows, grad = check(
        ops.kd_loss, student, teacher, labels, tau, 0.3, divergence=divergence, beta=0.3
    )
    if with_labels:
        assert rows[1] == 0 and not grad[1].any()  # the ignored row


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kd_loss_16bit(dtype, divergence):
    student = (torch.randn(N, V) * 3).to(dtype)
    teacher = (torch.randn(N, V) * 3).to(torch.bfloat16)  # teacher dtype may differ
    check(ops.kd_loss, student, teacher, labels_with_ignored(N, V), 2.0, 0.5, divergence=divergence)


@pytest.mark.parametrize("divergence", ["kl", "jsd"])
def test_kd_loss_teacher_log_probs_with_neg_inf(divergence):
    """-inf teacher log-probabilities, including a whole first block of them."""
    student = torch.randn(N, V) * 2
    teacher = torch.log_softmax(torch.randn(N, V) * 2, dim=1)
    teacher[0, :70] = float("-inf")
    teacher[2, ::3] = float("-inf")
    check(ops.kd_loss, student, teacher, labels_with_ignored(N, V), 1.5, 0.7, divergence=divergence)


def test_kd_loss_identical_distributions_and_single_column():
    student = torch.randn(N, V)
    rows, _ = check(ops.kd_loss, student, student.clone(), None, 1.0)
    assert rows.abs().max() < 1e-5
    check(ops.kd_loss, torch.randn(3, 1), torch.randn(3, 4), torch.zeros(3, dtype=torch.long), 2.0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kd_loss_without_grad(reduction):
    student, teacher = torch.randn(N, V), torch.randn(N, V)
    labels = labels_with_ignored(N, V)
    for divergence in ("kl", "jsd"):
        kw = {"reduction": reduction, "divergence": divergence}
        out = ops.kd_loss(student, teacher, labels, 2.0, 0.4, backend="triton", **kw)
        ref = ops.kd_loss(student, teacher, labels, 2.0, 0.4, backend="reference", **kw)
        torch.testing.assert_close(out, ref, rtol=2e-5, atol=1e-6)


def test_kd_loss_float64_is_not_supported():
    with pytest.raises(BackendUnavailableError, match="float64"):
        ops.kd_loss(torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8), backend="triton")


def topk_teacher(n, v, k, device="cpu"):
    logits = torch.randn(n, v, device=device) * 3
    logprobs, idx = torch.log_softmax(logits, 1).topk(k, dim=1)
    return idx, logprobs


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("with_labels", [False, True])
def test_kd_loss_topk(with_labels, tau):
    student = torch.randn(N, V) * 3
    idx, logprobs = topk_teacher(N, V, 20)
    idx[0, 1] = idx[0, 0]  # a duplicate index: its p adds up, as in the reference
    idx[3] = idx[3].flip(0)  # any order
    labels = labels_with_ignored(N, V) if with_labels else None
    check(ops.kd_loss_topk, student, idx, logprobs, labels, tau, 0.6)


@pytest.mark.parametrize("k", [1, V])
def test_kd_loss_topk_extreme_k(k):
    idx, logprobs = topk_teacher(N, V, k)
    check(ops.kd_loss_topk, (torch.randn(N, V) * 2).bfloat16(), idx, logprobs, None, 1.5)


# ---------------------------------------------------------------------------------------------
# GPU (run by bench/gpu_check.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("v", [32000, 128256])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_gpu_kd_loss(divergence, v):
    n = 64
    student = (torch.randn(n, v, device="cuda") * 3).bfloat16()
    teacher = (torch.randn(n, v + 64, device="cuda") * 3).bfloat16()
    labels = labels_with_ignored(n, v, "cuda")
    check(ops.kd_loss, student, teacher, labels, 2.0, 0.5, divergence=divergence)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [8, 64, 1024])
def test_gpu_kd_loss_topk(k):
    n, v = 64, 128256
    student = (torch.randn(n, v, device="cuda") * 3).bfloat16()
    idx, logprobs = topk_teacher(n, v, k, "cuda")
    check(ops.kd_loss_topk, student, idx, logprobs, labels_with_ignored(n, v, "cuda"), 2.0, 0.5)
