"""CUDA backend of the INT8 ops: ``llmkern_C::int8_*_cuda`` (csrc/cuda/int8.cu through the torch
glue csrc/cuda/int8_ops.cpp). Registered only when the extension was built with CUDA, so a
CPU-only install imports this module without registering anything. The ``*_linear`` ops take no
packed weight on the GPU (``packed`` is ignored): ``w8a8_linear`` is the quantisation kernel
(per token, or static with the calibrated scale read on the device) then the W8A8 GEMM."""

from __future__ import annotations

import torch

from llmkern import _ext
from llmkern.backends import register


def has_op(name: str) -> bool:
    """Whether ``llmkern._C`` was built with CUDA and registered ``llmkern_C::<name>``."""
    return _ext.available() and _ext._C.built_with_cuda() and hasattr(torch.ops.llmkern_C, name)


if has_op("int8_quantize_per_token_cuda"):

    @register("quantize_per_token", "cuda", devices=("cuda",))
    def quantize_per_token_cuda(x):
        q, scale = torch.ops.llmkern_C.int8_quantize_per_token_cuda(x)
        return q, scale


if has_op("int8_w8a8_gemm_cuda"):

    @register("w8a8_matmul", "cuda", devices=("cuda",))
    def w8a8_matmul_cuda(x_q, w_q, x_scale, w_scale, bias, out_dtype):
        return torch.ops.llmkern_C.int8_w8a8_gemm_cuda(x_q, w_q, x_scale, w_scale, bias, out_dtype)


if has_op("int8_w8_gemm_cuda"):

    @register("w8_matmul", "cuda", devices=("cuda",))
    def w8_matmul_cuda(x, w_q, w_scale, bias, group_size):
        return torch.ops.llmkern_C.int8_w8_gemm_cuda(x, w_q, w_scale, bias, group_size)


if has_op("int8_quantize_per_token_cuda") and has_op("int8_w8a8_gemm_cuda"):

    @register("w8a8_linear", "cuda", devices=("cuda",))
    def w8a8_linear_cuda(x, w_q, w_scale, bias, x_scale, packed):
        ops = torch.ops.llmkern_C
        x_q, s = ops.int8_quantize_per_token_cuda(x, x_scale)
        return ops.int8_w8a8_gemm_cuda(x_q, w_q, s, w_scale, bias, x.dtype)


if has_op("int8_w8_gemm_cuda"):

    @register("w8_linear", "cuda", devices=("cuda",))
    def w8_linear_cuda(x, w_q, w_scale, bias, group_size, packed):
        return torch.ops.llmkern_C.int8_w8_gemm_cuda(x, w_q, w_scale, bias, group_size)
