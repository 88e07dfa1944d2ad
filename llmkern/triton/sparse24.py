"""Triton backend of the 2:4 sparse matmuls: the compressed weight is expanded tile by tile in
registers (kernels in llmkern.triton.kernels.gemm, imported on first call)."""

from llmkern.backends import register

DEVICES = ("cpu", "cuda")  # cpu: only under TRITON_INTERPRET=1, when asked for by name


@register("sparse24_matmul", "triton", DEVICES)
def sparse24_matmul(x, values, meta, bias):
    from llmkern.triton.kernels.gemm import matmul

    return matmul(x, values, meta, None, None, bias, 0, x.dtype)


@register("sparse24_w8a8_matmul", "triton", DEVICES)
def sparse24_w8a8_matmul(x_q, values, meta, x_scale, w_scale, bias, out_dtype):
    from llmkern.triton.kernels.gemm import matmul

    return matmul(x_q, values, meta, x_scale, w_scale, bias, 0, out_dtype)


@register("sparse24_w8_matmul", "triton", DEVICES)
def sparse24_w8_matmul(x, values, meta, w_scale, bias):
    from llmkern.triton.kernels.gemm import matmul

    return matmul(x, values, meta, None, w_scale, bias, 0, x.dtype)


@register("sparse24_w8a8_linear", "triton", DEVICES)
def sparse24_w8a8_linear(x, values, meta, w_scale, bias):
    from llmkern.triton.kernels.gemm import matmul
    from llmkern.triton.kernels.quantize import quantize_per_token

    x_q, x_scale = quantize_per_token(x, None)
    return matmul(x_q, values, meta, x_scale, w_scale, bias, 0, x.dtype)
