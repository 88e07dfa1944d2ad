"""Triton backend of the INT8 ops (kernels in llmkern.triton.kernels, imported on first call)."""

from llmkern.backends import register

DEVICES = ("cpu", "cuda")  # cpu: only under TRITON_INTERPRET=1, when asked for by name


@register("quantize_per_token", "triton", DEVICES)
def quantize_per_token(x):
    from llmkern.triton.kernels.quantize import quantize_per_token

    return quantize_per_token(x)


@register("w8a8_matmul", "triton", DEVICES)
def w8a8_matmul(x_q, w_q, x_scale, w_scale, bias, out_dtype):
    from llmkern.triton.kernels.gemm import matmul

    return matmul(x_q, w_q, None, x_scale, w_scale, bias, 0, out_dtype)


@register("w8_matmul", "triton", DEVICES)
def w8_matmul(x, w_q, w_scale, bias, group_size):
    from llmkern.triton.kernels.gemm import matmul

    return matmul(x, w_q, None, None, w_scale, bias, group_size, x.dtype)
