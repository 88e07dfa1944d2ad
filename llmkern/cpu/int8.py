"""cpu backend of the int8 ops (csrc/cpu/int8_*.cpp) and the packing of weights into the layouts
of those kernels.

The kernels read weights pre-packed once (``pack_w8a8`` / ``pack_w8``: 64-channel panels in the
order the inner loops consume them, plus the VNNI compensation or the scales, behind a header
the kernel checks). The ``*_linear`` ops use the ``packed`` argument when given (llmkern.nn
modules prepare it once, see llmkern.backends.prepare); the canonical ``w8a8_matmul`` /
``w8_matmul`` pack their ``w_q`` on every call.

Kernel choice by shape: weight-only calls with more than :data:`W8_GEMM_ROWS` rows of x are
compute-bound, and torch's GEMM on the weight dequantised for the call beats the weight-only
kernel there (except the AMX kernel for fp32 x). At the other end, decode-sized calls
(:data:`W8_INT16_ROWS`; every call on AMX) on the AVX2, AVX-512 VNNI and AMX kernels round x to
int16 (:func:`round_x_int16`), see docs/numerics.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmkern import _ext
from llmkern.backends import register, register_prepare
from llmkern.cpu import isa_family
from llmkern.ops.int8 import dequantize_weight

# Rows of x above which weight-only products run as torch's GEMM on the dequantised weight, and
# the dtype that GEMM computes in, per ISA path where measured apart (amx), else per ISA family
# (llmkern.cpu.isa_family), and x dtype; a missing dtype keeps the kernel.
W8_GEMM_ROWS = {
    # Intel Xeon with AMX, 2 threads: the AMX kernel (int16 x) against torch's fp32 GEMM 1.55-3.8x
    # at M = 1024-4096 on 4096x4096 and the MiniLM shapes, so fp32 keeps it; torch's bf16 GEMM
    # (AMX-BF16 in oneDNN) wins from M = 512-1024 (0.3-0.6x at M = 2048-4096 on MiniLM's shapes,
    # 1.6-8.9x at M = 256).
    "amx": {torch.bfloat16: (256, torch.bfloat16)},
    # 2-core AVX-512 machine, K x N = 384x384, 384x1536, 1536x384 and 4096x4096: fp32 1.0-1.56x
    # faster from M = 2048 (0.93x on 4096x4096 at M = 1024), bf16 1.2-6x from M = 512. fp16
    # keeps the kernel (torch's fp16 CPU GEMM is slow). The bf16 GEMM rounds the dequantised
    # weight to bf16 (relative 2^-9).
    "avx512": {torch.float32: (1024, torch.float32), torch.bfloat16: (256, torch.bfloat16)},
    # AMD Zen 1 (AVX2): torch's bf16 GEMM has no native bf16 there (2322 ms at M = 512 on
    # 4096x4096, 6.8x the kernel), so bf16 x is multiplied in fp32 and rounded once: 0.98-1.2x
    # the kernel at M = 512 on 4096x4096, 384x1536 and 1536x384, 1.2x at M = 2048 (0.5-0.8x at
    # M = 128-256). fp32 as measured on AVX-512 (1.2x the kernel at M = 2048 on 4096x4096).
    "avx2": {torch.float32: (1024, torch.float32), torch.bfloat16: (512, torch.float32)},
}


# Weight-only calls with at most this many rows (scales per channel or per multiple of
# W8_X_BLOCK columns) multiply int16 x by the int8 weights instead of converting every weight to
# fp32, per active ISA path: AVX2 vpmaddwd, 1.2-1.8x at M = 1-2 and 1.0-1.3x at M = 3-4 on AMD
# Zen 1, where the convert has one port; AVX-512 VNNI vpdpwssd, 1.2x at M = 1 and 1.4-1.9x at
# M = 2-256 on an Intel Xeon, so there at every M the kernel takes (W8_GEMM_ROWS); on AMX
# machines from M = 3 the same int16 products run on AMX tiles, to the bit (1.4x vpdpwssd at
# M = 8 from DRAM, 2-4x at M = 32-4096), at every row count (inf). x is rounded per W8_X_BLOCK
# columns first (round_x_int16). The 2:4 weight-only kernels round the same on AVX2 and, where
# the CPU has AVX512_VBMI too, on AVX-512 VNNI (AMX machines included). Mirrors kW8Int16Rows,
# kW8Int16RowsVnni, kW8Int16RowsAmx and kW8XBlock in csrc/cpu (tests/cpu/test_int8.py and
# test_sparse24.py check the boundary).
W8_INT16_ROWS = {"avx2": 4, "avx512_vnni": 1024, "amx": math.inf}
W8_X_BLOCK = 128


def w8_int16_rows(sparse24: bool = False) -> float:
    """Rows up to which the active ISA path's weight-only kernels (the 2:4 ones with
    ``sparse24``) round x to int16; 0: never, inf: always."""
    if not _ext.available():
        return 0
    isa = _ext._C.active_isa()
    if sparse24 and isa != "avx2":
        if not _ext._C.has_avx512_vnni_vbmi():
            return 0
        isa = "avx512_vnni"  # the 2:4 kernels have no AMX variant
    return W8_INT16_ROWS.get(isa, 0)


def w8_rounds_x(x: torch.Tensor, group_size: int, sparse24: bool = False) -> bool:
    """Whether the cpu weight-only kernels (the 2:4 kernel with ``sparse24``) round this ``x``
    to int16 (and so follow :func:`round_x_int16`): at most :func:`w8_int16_rows` rows, one
    scale per channel or scale groups of whole W8_X_BLOCK blocks, and every block finite with
    absmax 0 or at least 2^-100 (else the fp32 kernels run)."""
    if x.shape[0] > w8_int16_rows(sparse24) or (not sparse24 and w8_uses_gemm(x)):
        return False
    if 0 < group_size < x.shape[1] and group_size % W8_X_BLOCK:  # groups split x blocks
        return False
    absmax = _blocks(x.float()).abs().amax(-1)
    return bool(torch.isfinite(absmax).all() and ((absmax == 0) | (absmax >= 2.0**-100)).all())


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """[M, K] -> [M, ceil(K / W8_X_BLOCK), W8_X_BLOCK], zero-padded."""
    return F.pad(x, (0, -x.shape[1] % W8_X_BLOCK)).view(x.shape[0], -1, W8_X_BLOCK)


def round_x_int16(x: torch.Tensor) -> torch.Tensor:
    """x as the int16 weight-only kernels see it, in float32: per row and W8_X_BLOCK columns,
    ``q * s`` with ``s = 2^(e - 15)`` (the block's absmax < 2^e) and ``q = round_half_even(x / s)``
    clamped to +-32767. So ``|x - q s| <= 2^-14 absmax``; bf16 x within 2^7 of its block's absmax
    is exact."""
    blocks = _blocks(x.float())
    _, e = torch.frexp(blocks.abs().amax(-1, keepdim=True))
    s = torch.ldexp(torch.ones_like(blocks[..., :1]), e - 15)
    q = torch.round(blocks / s).clamp(-32767, 32767)
    return (q * s).view(x.shape[0], -1)[:, : x.shape[1]]


def x_rounding_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float64 [M, N] bound on what round_x_int16 changes in ``x @ w.T``: 2^-14 of each block's
    absmax times |w| summed over the block's columns."""
    absmax = _blocks(x.double()).abs().amax(-1, keepdim=True)
    per_col = absmax.expand(-1, -1, W8_X_BLOCK).reshape(x.shape[0], -1)[:, : x.shape[1]]
    return 2.0**-14 * (per_col @ w.double().abs().T)


def w8_gemm_rules() -> dict:
    """The W8_GEMM_ROWS entry of the active ISA path (its own, else its family's)."""
    isa = _ext._C.active_isa() if _ext.available() else "scalar"
    return W8_GEMM_ROWS.get(isa) or W8_GEMM_ROWS[isa_family()]


def w8_uses_gemm(x: torch.Tensor) -> bool:
    rule = w8_gemm_rules().get(x.dtype)
    return rule is not None and x.shape[0] > rule[0]


def w8_gemm(x, w_q, w_scale, group_size, bias) -> torch.Tensor:
    """``x @ dequantised(w_q)^T + bias`` with torch's GEMM in the dtype W8_GEMM_ROWS gives for
    x's dtype (x's own by default), rounded to x's dtype."""
    rule = w8_gemm_rules().get(x.dtype)
    dtype = x.dtype if rule is None else rule[1]
    w = dequantize_weight(w_q, w_scale, group_size).to(dtype)
    y = F.linear(x.to(dtype), w, None if bias is None else bias.to(dtype))
    return y.to(x.dtype)


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
        return torch.ops.llmkern_C.int8_w8a8_gemm(x_q, packed, x_scale, w_scale, bias, out_dtype)

    @register("w8_matmul", "cpu")
    def w8_matmul(x, w_q, w_scale, bias, group_size):
        return w8_linear(x, w_q, w_scale, bias, group_size, None)

    @register("w8a8_linear", "cpu")
    def w8a8_linear(x, w_q, w_scale, bias, x_scale, packed):
        packed = pack_w8a8(w_q) if packed is None else packed
        return torch.ops.llmkern_C.int8_w8a8_linear(x, packed, w_scale, bias, x_scale)

    @register("w8_linear", "cpu")
    def w8_linear(x, w_q, w_scale, bias, group_size, packed):
        if w8_uses_gemm(x):
            return w8_gemm(x, w_q, w_scale, group_size, bias)
        packed = pack_w8(w_q, w_scale, group_size) if packed is None else packed
        return torch.ops.llmkern_C.int8_w8_linear(x, packed, w_scale, bias, group_size)

    register_prepare("w8a8_linear", "cpu")(pack_w8a8)
    register_prepare("w8_linear", "cpu")(pack_w8)
