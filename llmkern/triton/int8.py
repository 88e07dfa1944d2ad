"""Triton backend of the INT8 ops (kernels in llmkern.triton.kernels, imported on first call).
The ``*_linear`` ops ignore ``packed`` (a CPU layout): ``w8a8_linear`` quantises x (per token, or
static with the calibrated scale read on the device) and runs the W8A8 GEMM."""

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


@register("w8a8_linear", "triton", DEVICES)
def w8a8_linear(x, w_q, w_scale, bias, x_scale, packed):
    from llmkern.triton.kernels.gemm import matmul
    from llmkern.triton.kernels.quantize import quantize_per_token

    x_q, s = quantize_per_token(x, x_scale)
    return matmul(x_q, w_q, None, s, w_scale, bias, 0, x.dtype)


@register("w8_linear", "triton", DEVICES)
def w8_linear(x, w_q, w_scale, bias, group_size, packed):
    return w8_matmul(x, w_q, w_scale, bias, group_size)
