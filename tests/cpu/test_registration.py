"""The ``llmkern_C`` op set: one schema per op (csrc/schemas.cpp), kernels per dispatch key, no
per-device name suffixes, and autograd passing through to the kernels as before the split."""

import warnings

import pytest
import torch

from llmkern import _ext
from llmkern.cpu import int8 as cpu_int8
from llmkern.ops.int8 import quantize_per_token_ref, quantize_static_ref, quantize_weight

pytestmark = pytest.mark.usefixtures("needs_ext")

CPU_ONLY = {"int8_pack_w8a8", "int8_pack_w8", "kd_vector_math", "sparse24_w8a8_matmul"}
CUDA_ONLY = {"sparse24_mma", "sparse24_mma_s8"}
BOTH = {
    "int8_quantize_per_token",
    "int8_w8a8_gemm",
    "int8_w8a8_linear",
    "int8_w8_linear",
    "kd_loss_rows",
    "kd_loss_topk_rows",
    "sparse24_matmul",
}


def _declared():
    names = torch._C._dispatch_get_all_op_names()
    return {n.split("::", 1)[1] for n in names if n.startswith("llmkern_C::")}


def test_every_op_declared_once_with_its_device_kernels():
    assert _declared() == CPU_ONLY | CUDA_ONLY | BOTH
    assert set(_ext.native_ops("CPU")) == CPU_ONLY | BOTH
    cuda = set(_ext.native_ops("CUDA"))
    assert cuda == (CUDA_ONLY | BOTH if _ext._C.built_with_cuda() else set())


def test_cuda_only_op_on_cpu_tensors_names_the_backend():
    x = torch.zeros(1, 32, dtype=torch.half)
    with pytest.raises(NotImplementedError, match="CPU"):
        torch.ops.llmkern_C.sparse24_mma(x, x, x, 1, 32, None, None)


def test_requires_grad_inputs_give_plain_outputs_without_warnings():
    x = torch.randn(5, 40, requires_grad=True)
    w_q, w_scale = quantize_weight(torch.randn(12, 40))
    packed = cpu_int8.pack_w8a8(w_q)
    ops = torch.ops.llmkern_C
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q, s = ops.int8_quantize_per_token(x)
        y = ops.int8_w8a8_linear(x, packed, w_scale, None, None)
        rows, grad = ops.kd_loss_rows(x, torch.randn(5, 40), None, 1.0, 0.5, -100, "kl", 0.5, True)
    for t in (q, s, y, rows, grad):
        assert not t.requires_grad and t.grad_fn is None
    assert torch.equal(q, quantize_per_token_ref(x.detach())[0])


def test_static_quantize_on_cpu_matches_reference():
    x = torch.randn(6, 33)
    x_scale = torch.tensor(0.02)
    q, s = torch.ops.llmkern_C.int8_quantize_per_token(x, x_scale)
    q_ref, s_ref = quantize_static_ref(x, x_scale)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


def test_w8_linear_checks_scales_against_the_packed_weight():
    w_q, w_scale = quantize_weight(torch.randn(8, 64), group_size=32)
    packed = cpu_int8.pack_w8(w_q, w_scale, 32)
    x = torch.randn(3, 64)
    torch.ops.llmkern_C.int8_w8_linear(x, packed, w_scale, None, 32)
    with pytest.raises(RuntimeError, match="differ from the packed weight"):
        torch.ops.llmkern_C.int8_w8_linear(x, packed, w_scale, None, 0)
