"""cpu backend of the int8 ops (csrc/cpu/int8_*.cpp) and the packing of weights into the layouts
of those kernels.

The kernels read weights pre-packed once (``pack_w8a8`` / ``pack_w8``: 64-channel panels in the
order the inner loops consume them, plus the VNNI compensation or the scales, behind a header
the kernel checks). The ``*_linear`` ops use the ``packed`` argument when given; the canonical
``w8a8_matmul`` / ``w8_matmul`` pack their ``w_q`` on every call, so repeated calls with one
weight should go through the ``*_linear`` ops (as llmkern.nn does).
"""

from __future__ import annotations

import torch

from llmkern import _ext
from llmkern.backends import register


def pack_w8a8(w_q: torch.Tensor) -> torch.Tensor:
    """int8 weight [N, K] -> uint8 buffer in the layout of the CPU W8A8 kernels."""
    return torch.ops.llmkern_C.int8_pack_w8a8(w_q)


def pack_w8(w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int = 0) -> torch.Tensor:
    """int8 weight [N, K] and float32 scales ([N] or [N, groups]) -> uint8 buffer in the layout
    of the CPU weight-only kernels (scales included)."""
    return torch.ops.llmkern_C.int8_pack_w8(w_q, w_scale, group_size)


if _ext.available():

    @register("quantize_per_token", "cpu")
    def quantize_per_token(x):
        return torch.ops.llmkern_C.int8_quantize_per_token(x)

    @register("w8a8_matmul", "cpu")
    def w8a8_matmul(x_q, w_q, x_scale, w_scale, bias, out_dtype):
        packed = pack_w8a8(w_q)
        return torch.ops.llmkern_C.int8_w8a8_gemm(x_q, x_scale, w_scale, bias, packed, out_dtype)

    @register("w8_matmul", "cpu")
    def w8_matmul(x, w_q, w_scale, bias, group_size):
        return torch.ops.llmkern_C.int8_w8_linear(x, bias, pack_w8(w_q, w_scale, group_size))

    @register("w8a8_linear", "cpu")
    def w8a8_linear(x, w_q, w_scale, bias, x_scale, packed):
        packed = pack_w8a8(w_q) if packed is None else packed
        return torch.ops.llmkern_C.int8_w8a8_linear(x, w_scale, bias, x_scale, packed)

    @register("w8_linear", "cpu")
    def w8_linear(x, w_q, w_scale, bias, group_size, packed):
        packed = pack_w8(w_q, w_scale, group_size) if packed is None else packed
        return torch.ops.llmkern_C.int8_w8_linear(x, bias, packed)
