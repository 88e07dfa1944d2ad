"""CPU backend of the 2:4 ops: the C++ kernels of csrc/cpu/sparse24_*.cpp.

They read the canonical compressed form (values [N, K/2], meta [N, ceil(K/8)]) directly; x is
copied once into a zero-padded fp32 (or int8) buffer. ISA variant (AVX-512 VNNI+VBMI / AVX-512 /
AVX2 / scalar) is chosen per call in C++. compress_24 / decompress_24 have no CPU kernel: their
vectorised references are a single pass over the weight and run once per model, not per step.
"""

from __future__ import annotations

import torch

from llmkern.backends import register


def sparse24_matmul_cpu(x, values, meta, bias):
    return torch.ops.llmkern_C.sparse24_matmul(
        x, values.contiguous(), meta.contiguous(), bias, None
    )


def sparse24_w8_matmul_cpu(x, values, meta, w_scale, bias):
    return torch.ops.llmkern_C.sparse24_matmul(
        x, values.contiguous(), meta.contiguous(), bias, w_scale
    )


def sparse24_w8a8_matmul_cpu(x_q, values, meta, x_scale, w_scale, bias, out_dtype):
    return torch.ops.llmkern_C.sparse24_w8a8_matmul(
        x_q, values.contiguous(), meta.contiguous(), x_scale, w_scale, bias, out_dtype
    )


register("sparse24_matmul", "cpu")(sparse24_matmul_cpu)
register("sparse24_w8_matmul", "cpu")(sparse24_w8_matmul_cpu)
register("sparse24_w8a8_matmul", "cpu")(sparse24_w8a8_matmul_cpu)
