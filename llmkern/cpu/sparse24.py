"""CPU backend of the 2:4 ops: the C++ kernels of csrc/cpu/sparse24_*.cpp.

They read the canonical compressed form (values [N, K/2], meta [N, ceil(K/8)]) directly; x is
copied once into a zero-padded fp32 (or int8) buffer. ISA variant (AVX-512 VNNI+VBMI / AVX-512 /
AVX2 / scalar) is chosen in C++. compress_24 / decompress_24 have no CPU kernel: their
vectorised references are a single pass over the weight and run once per model, not per step.

Kernel choice by shape: 2:4 pays off while reading the weight dominates (small batches,
decoding), and also where the multiply-adds dominate (many rows): the column kernel
(csrc/cpu/sparse24_columns.h, AVX2 and AVX-512) multiplies kept values only, so half the FMAs
of a dense GEMM disappear. For the row counts in :data:`DENSE_ROWS` the dense path wins instead
(torch's BLAS for float weights, llmkern's dense int8 kernels for int8 ones), and the kernels here
multiply with a dense form of the weight (for finite x: see ``_goes_dense``): kept in the
calling module's Prepared forms (built on first use, costing the dense weight's memory; a module
with ``max_sparse_rows = None`` never builds it), or rebuilt per call for a bare op call.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from llmkern import _ext
from llmkern.backends import register, weight_key
from llmkern.cpu import isa_family
from llmkern.ops.sparse24 import decompress_24_ref

# Rows of x (first, last; None: no end) for which the dense path beats the 2:4 kernels on CPU, per
# ISA family (the C++ kernels differ; "amx" overrides entries of "avx512", see dense_rows_table),
# weight form (None: float values) and x dtype; a missing entry: never. Measured with
# bench/bench_sparse24.py and side-by-side op timings, 2 threads.
DENSE_ROWS = {
    # fp32 never goes dense: the AVX-512 column kernel (from 16 rows, the row kernels below
    # that) against torch's fp32 GEMM, module against nn.Linear with bias (Intel Xeon with AMX, 2
    # threads): 1.3-1.5x at M = 16-64, 1.28-1.34x at M = 256, 1.15-1.19x at M = 1024-4096 on
    # 2048x5632 and 4096x4096; MiniLM's 384x1536 and 1536x384 0.92-1.21x at M = 16-1024,
    # 0.98-0.99x at M = 4096; the toy 384x384 (0.1-0.4 ms a call) 0.86-1.09x.
    # bf16 (AMD EPYC with AVX-512): 2:4 vs oneDNN's bf16 GEMM wins at M <= 4 (torch's bf16
    # path is slow there) and is 0.8-1.0x at M = 8; W8A8 2:4 up to M = 4 (0.9x at 8).
    # Int8 weight-only: the 2:4 int16 row kernel reads 0.63x the bytes of the dense int8 kernel
    # but picks x per kept value and per x row (~12 cycles per 64 kept values). Through the
    # modules of a Llama-shaped model (hidden 2048, FFN 5632, LM head 32000, each module called
    # in turn so that weights come from DRAM; Intel Xeon with AMX, 2 threads) the 2:4 module is
    # 1.16-1.53x as fast as the dense int8 module at M = 1 (1.42x summed over a token's
    # modules), 1.00-1.21x at M = 2 (1.16x), 0.87-1.00x at M = 3 and 0.73-0.85x at M = 4, where
    # the dense kernel runs on AMX tiles. With hot weights the dense module wins from M = 2
    # (0.74-0.77x); decode reads its weights from DRAM, so the dense path starts at 3 rows.
    "avx512": {
        (None, torch.bfloat16): (5, None),
        # torch's fp16 CPU GEMM on AMD EPYC: 2:4 3.0-3.7x at M = 16-256. (On the Intel Xeon,
        # whose AVX512-FP16 torch uses, the column kernel is 0.64-1.17x it at M = 64-1024.)
        (None, torch.float16): (1025, None),
        ("w8", torch.float32): (3, None),
        ("w8", torch.bfloat16): (3, None),
        ("w8", torch.float16): (3, None),
        ("w8a8", None): (5, None),
    },
    # AMX machines (Intel Xeon, 2 threads), in place of the AVX-512 entries: bf16 2:4 against
    # oneDNN's AMX bf16 GEMM, weights from DRAM, on 2048x5632, 4096x4096, 5632x2048 and
    # 384x1536: 1.7-2.3x at M = 4, 1.26-1.41x at 5, 1.16-1.31x at 6, 1.04-1.21x at 8,
    # 0.79-1.04x at 12, 0.55-0.81x at 16.
    "amx": {
        (None, torch.bfloat16): (9, None),
    },
    # AMD EPYC Zen 1 (AVX2, no AVX-512). Float 2:4 never goes dense: bench/bench_sparse24.py
    # (2 threads, stop 21) has the module at 1.6-2.1x nn.Linear fp32 at M = 256-1024 on
    # 4096x4096, 2048x5632 and the MiniLM shapes, >= 1.0x at every M from 1, and bf16 2:4 at
    # 8.8-9.4x torch's bf16 nn.Linear at M = 64-256 (no native bf16 GEMM there). int8
    # weight-only: llmkern's dense kernel wins at M < 16. At M <= 4 the 2:4 int16 row kernel
    # (vpshufb picks each kept value's x) is 1.5-2.5x the float row kernels at M = 1 but, on the
    # Llama shapes 2048x2048, 5632x2048, 2048x5632 and 32000x2048, 0.63-0.89x the dense int16
    # kernel at M = 1 and 0.60-0.94x at M = 2-4: its x picks cost per column about what the
    # dense kernel's whole work does. From 16 rows the column kernel, 1.2-2.2x the dense kernel
    # in the bench rows at M = 16-1024 (but 0.88x at M = 16 on MiniLM's 384x1536).
    # W8A8: the dense kernel wins up to about 24 rows (AVX2's int32 multiply makes the row
    # kernel 0.17-0.26x it; about even at 24 for the column kernel); from 32 rows the exact
    # column kernel, 1.1-1.8x the dense W8A8 kernel at M = 64-1024 in the bench rows.
    "avx2": {
        ("w8", torch.float32): (1, 15),
        ("w8", torch.bfloat16): (1, 15),
        ("w8", torch.float16): (1, 15),
        ("w8a8", None): (1, 31),
    },
}


def dense_rows_table() -> dict:
    """:data:`DENSE_ROWS` of the active ISA: its family's bands, with the ISA's own entries
    (DENSE_ROWS["amx"]) in place of the family's. Read on every module call: merged once per
    ISA (the ISA can be switched at run time)."""
    return _dense_rows_of(_ext._C.active_isa() if _ext.available() else "scalar")


@functools.cache
def _dense_rows_of(isa: str) -> dict:
    return {**DENSE_ROWS[isa_family()], **DENSE_ROWS.get(isa, {})}


def runs_dense(rows: int, form: str | None, dtype: torch.dtype, max_rows: int | None = -1) -> bool:
    """Whether ``rows`` rows of finite x take the dense path for weight form ``form`` (None,
    "w8", "w8a8") and x dtype on this machine's ISA. ``max_rows`` is a module's own setting (the
    2:4 kernel up to that many rows; None: always), -1 for the measured :data:`DENSE_ROWS`."""
    if max_rows is None:
        return False
    if max_rows != -1:
        return rows > max_rows
    band = dense_rows_table().get((form, None if form == "w8a8" else dtype))
    return band is not None and band[0] <= rows and (band[1] is None or rows <= band[1])


def _goes_dense(x, form, prepared) -> bool:
    max_rows = -1 if prepared is None else prepared.settings.get("max_rows", -1)
    if not runs_dense(x.shape[0], form, x.dtype, max_rows):
        return False
    # A dense product multiplies pruned weights too (0 * inf = NaN): float x with a non-finite
    # value keeps the 2:4 kernel, which honours the ops' contract. (W8A8 quantises such a row
    # to a NaN scale either way.) A finite sum has finite terms; one that overflows only sends
    # x to the 2:4 kernel. One reduction: isfinite().all() took 3x as long per decode step.
    return form == "w8a8" or math.isfinite(x.sum(dtype=torch.float32).item())


def _dense_form(prepared, name, weight, build):
    return build() if prepared is None else prepared.get(name, weight_key(*weight), build)


def _decompressed(values, meta):
    return decompress_24_ref(values, meta, 2 * values.shape[1])


def _has_bf16_subnormal(t: torch.Tensor) -> bool:
    """torch's bf16 CPU GEMM (oneDNN with AVX512_BF16 or AMX) reads subnormal inputs as zero
    (seen on an Intel Xeon with AMX from 5 rows): a bf16 product holding one keeps the 2:4
    kernel, which multiplies them exactly."""
    if t.dtype != torch.bfloat16:
        return False
    return bool(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).any())


def _dense_weight(values, meta):
    """The dense weight for torch's GEMM, or None where that GEMM would change it."""
    w = _decompressed(values, meta)
    return None if _has_bf16_subnormal(w) else w


def sparse24_matmul_cpu(x, values, meta, bias, prepared=None):
    if _goes_dense(x, None, prepared) and not _has_bf16_subnormal(x):
        w = _dense_form(prepared, "dense", (values, meta), lambda: _dense_weight(values, meta))
        if w is not None:
            return F.linear(x, w, None if bias is None else bias.to(x.dtype))
    return torch.ops.llmkern_C.sparse24_matmul(
        x, values.contiguous(), meta.contiguous(), None, bias
    )


def sparse24_w8_matmul_cpu(x, values, meta, w_scale, bias, prepared=None):
    from llmkern.cpu.int8 import pack_w8, w8_gemm, w8_uses_gemm

    if _goes_dense(x, "w8", prepared):
        if w8_uses_gemm(x):  # compute-bound: torch's GEMM, as the dense weight-only op does
            return w8_gemm(x, _decompressed(values, meta), w_scale, 0, bias)
        weight = (values, meta, w_scale)
        packed = _dense_form(
            prepared, "packed w8", weight, lambda: pack_w8(_decompressed(values, meta), w_scale)
        )
        return torch.ops.llmkern_C.int8_w8_linear(x, packed, w_scale, bias, 0)
    return torch.ops.llmkern_C.sparse24_matmul(
        x, values.contiguous(), meta.contiguous(), w_scale, bias
    )


def sparse24_w8a8_matmul_cpu(x_q, values, meta, x_scale, w_scale, bias, out_dtype):
    return torch.ops.llmkern_C.sparse24_w8a8_matmul(
        x_q, values.contiguous(), meta.contiguous(), x_scale, w_scale, bias, out_dtype
    )


def sparse24_w8a8_linear_cpu(x, values, meta, w_scale, bias, prepared=None):
    from llmkern.cpu.int8 import pack_w8a8

    if _goes_dense(x, "w8a8", prepared):
        packed = _dense_form(
            prepared, "packed w8a8", (values, meta), lambda: pack_w8a8(_decompressed(values, meta))
        )
        return torch.ops.llmkern_C.int8_w8a8_linear(x, packed, w_scale, bias, None)
    x_q, x_scale = torch.ops.llmkern_C.int8_quantize_per_token(x)
    return sparse24_w8a8_matmul_cpu(x_q, values, meta, x_scale, w_scale, bias, x.dtype)


register("sparse24_matmul", "cpu", takes_prepared=True)(sparse24_matmul_cpu)
register("sparse24_w8_matmul", "cpu", takes_prepared=True)(sparse24_w8_matmul_cpu)
register("sparse24_w8a8_matmul", "cpu")(sparse24_w8a8_matmul_cpu)
register("sparse24_w8a8_linear", "cpu", takes_prepared=True)(sparse24_w8a8_linear_cpu)
