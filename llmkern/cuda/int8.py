"""CUDA backend of the INT8 ops: the CUDA kernels of ``llmkern_C::int8_*`` (csrc/cuda/int8.cu
through the torch glue csrc/cuda/int8_ops.cpp; the same ops as the CPU backend's, whose
``weight`` argument is the int8 [N, K] weight here). Registered only when the extension was built
with CUDA, so a CPU-only install imports this module without registering anything. The
``*_linear`` ops take no packed weight on the GPU (``packed`` is ignored): ``w8a8_linear`` is the
quantisation kernel (per token, or static with the calibrated scale read on the device) then the
W8A8 GEMM."""

from __future__ import annotations

import torch

from llmkern import _ext
from llmkern.backends import register


def has_op(name: str) -> bool:
    """Whether ``llmkern._C`` was built with CUDA and has a CUDA kernel for
    ``llmkern_C::<name>`` (a build may leave out a kernel family: LLMKERN_CUDA_FAMILIES)."""
    return _ext.available() and _ext._C.built_with_cuda() and _ext.has_kernel(name, "CUDA")


if has_op("int8_quantize_per_token"):

    @register("quantize_per_token", "cuda", devices=("cuda",))
    def quantize_per_token_cuda(x):
        q, scale = torch.ops.llmkern_C.int8_quantize_per_token(x)
        return q, scale


if has_op("int8_w8a8_gemm"):

    @register("w8a8_matmul", "cuda", devices=("cuda",))
    def w8a8_matmul_cuda(x_q, w_q, x_scale, w_scale, bias, out_dtype):
        return torch.ops.llmkern_C.int8_w8a8_gemm(x_q, w_q, x_scale, w_scale, bias, out_dtype)


if has_op("int8_w8a8_linear"):

    @register("w8a8_linear", "cuda", devices=("cuda",))
    def w8a8_linear_cuda(x, w_q, w_scale, bias, x_scale, packed):
        return torch.ops.llmkern_C.int8_w8a8_linear(x, w_q, w_scale, bias, x_scale)


if has_op("int8_w8_linear"):

    @register("w8_matmul", "cuda", devices=("cuda",))
    def w8_matmul_cuda(x, w_q, w_scale, bias, group_size):
        return torch.ops.llmkern_C.int8_w8_linear(x, w_q, w_scale, bias, group_size)

    @register("w8_linear", "cuda", devices=("cuda",))
    def w8_linear_cuda(x, w_q, w_scale, bias, group_size, packed):
        return torch.ops.llmkern_C.int8_w8_linear(x, w_q, w_scale, bias, group_size)
