"""CUDA backend of the 2:4 sparse ops (kernels in csrc/cuda/sparse24.cu).

Two kernel families:

- **Tensor-core path** (``mma.sp``): the 2:4 weight is the sparse operand A of
  ``mma.sp.m16n8k32`` (fp16/bf16, also int8 weights widened in registers for the weight-only
  op) or ``mma.sp.m16n8k64`` (int8 x int8, W8A8), computing ``out^T = W x^T``. It reads the
  weight in the *mma.sp layout* below, built from the canonical form by :func:`to_mma_sp_layout`
  (exact; :func:`from_mma_sp_layout` inverts it), kept in the calling module's Prepared forms.
- **Decode path** (M <= :data:`DECODE_MAX_M`, and every M for float32 x, which has no 2:4
  tensor-core instruction): CUDA cores, reading the canonical ``values``/``meta`` directly, so
  it moves only the ~56% of the dense bytes that 2:4 keeps.

mma.sp layout (one 16-row x one K-tile block of W per entry; K-tile = 32 logical columns for
``m16n8k32``, 64 for ``m16n8k64``; N padded to a multiple of 128, K to a multiple of 128, with
zero values and the valid code ``0b0100`` in padding):

- ``values [N_pad/16, K_pad/KT, 32, E]``: entry ``[i, j, lane]`` is the A-fragment of lane
  ``lane = 4 * g + t`` (PTX: groupID g, threadID_in_group t) in register order. Register r holds
  row ``g + 8 * (r % 2)`` of the row tile and, for m16n8k32, the two kept values of group
  ``t + 4 * (r // 2)`` of the K-tile (E = 8 elements); for m16n8k64 the four kept values of
  groups ``2t, 2t+1 (+8 if r >= 2)`` (E = 16 bytes).
- ``meta uint8 [N_pad/16, K_pad/KT, B]``: little-endian 32-bit metadata words, each 4-bit code
  in the canonical encoding (``idx0 | idx1 << 2``). m16n8k32 (sparsity selector 0, so lanes with
  t in {0, 1} supply it): 16 words, word ``2g + t`` = groups ``4t..4t+3`` of row g (bits 0-15)
  and of row g + 8 (bits 16-31). m16n8k64 (all lanes supply it): 32 words, word ``4g + t`` =
  groups ``8 * (t // 2) .. + 7`` of row ``g + 8 * (t % 2)``.

Sources for the metadata distribution (the PTX ISA gives it only as figures): m16n8k32 as in
LLVM's sparse-mma-2-4-f16 integration test and TileLang's mma.sp loaders; m16n8k64 as in
TileLang's int8 loader (32-bit metadata). ``tests/test_cuda_sparse24.py`` states both as an
emulation of the tensor core; the GPU tests confirm them on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmkern.backends import register, weight_key
from llmkern.cuda import int8 as cuda_int8

MMA16 = "m16n8k32"
MMA8 = "m16n8k64"
LAYOUTS = (MMA16, MMA8)
ROW_PAD = 128  # the largest weight-row tile of the tensor-core kernel
K_PAD = 128  # two K-tiles of either layout: the kernel stages two per pipeline step
PAD_CODE = 0b0100  # idx0 = 0, idx1 = 1: a valid code (0b0000 is undefined for mma.sp)
DECODE_MAX_M = 4  # up to this many tokens the CUDA-core decode path wins (tune on the GPU)

_K_TILE = {MMA16: 32, MMA8: 64}


@dataclass(frozen=True)
class MmaSpWeight:
    """A 2:4 weight [n, k] in the mma.sp layout (see the module docstring)."""

    values: torch.Tensor
    meta: torch.Tensor
    n: int
    k: int
    layout: str


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _codes(meta: torch.Tensor, k: int) -> torch.Tensor:
    """Canonical meta [N, ceil(K/8)] -> 4-bit codes uint8 [N, K/4]."""
    return torch.stack((meta & 0xF, meta >> 4), dim=2).reshape(meta.shape[0], -1)[:, : k // 4]


def _pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes [R, G] -> bytes [R, ceil(G/2)], even group in the low nibble."""
    if codes.shape[1] % 2:
        codes = F.pad(codes, (0, 1))
    pairs = codes.reshape(codes.shape[0], -1, 2)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).contiguous()


# Tile-split shapes of the padded row-major arrays and the permutation into fragment order.
# values [Np, Kp/2] -> (NT, rh, g, KT, ch, t, e); fragment order (NT, KT, g, t, ch, rh, e):
# register r = rh + 2 * ch holds row g + 8 * rh and the ch-th half of the lane's K range.
_VALUES_PERM = (0, 3, 2, 5, 4, 1, 6)
# meta16 [Np, Kp/8] -> (NT, rh, g, KT, t, byte); words 2g + t, rows g (low half), g + 8 (high).
# meta8 [Np, Kp/8] -> (NT, t%2, g, KT, t//2, byte); words 4g + t, row g + 8 * (t % 2).
_META_PERM = (0, 3, 2, 4, 1, 5)


def _split_shapes(layout: str, nt: int, kt: int):
    if layout == MMA16:
        return (nt, 2, 8, kt, 2, 4, 2), (nt, 2, 8, kt, 2, 2)
    return (nt, 2, 8, kt, 2, 4, 4), (nt, 2, 8, kt, 2, 4)


def to_mma_sp_layout(values: torch.Tensor, meta: torch.Tensor, layout: str) -> MmaSpWeight:
    """Canonical (values [N, K/2], meta [N, ceil(K/8)]) -> :class:`MmaSpWeight` (exact)."""
    _check_layout(layout)
    n, k = values.shape[0], 2 * values.shape[1]
    n_pad, k_pad = _round_up(n, ROW_PAD), _round_up(k, K_PAD)
    nt, kt = n_pad // 16, k_pad // _K_TILE[layout]
    vals = F.pad(values, (0, (k_pad - k) // 2, 0, n_pad - n))
    codes = F.pad(_codes(meta, k), (0, (k_pad - k) // 4, 0, n_pad - n), value=PAD_CODE)
    vshape, mshape = _split_shapes(layout, nt, kt)
    packed_values = vals.reshape(vshape).permute(_VALUES_PERM).reshape(nt, kt, 32, -1)
    packed_meta = _pack_codes(codes).reshape(mshape).permute(_META_PERM).reshape(nt, kt, -1)
    return MmaSpWeight(packed_values.contiguous(), packed_meta.contiguous(), n, k, layout)


def from_mma_sp_layout(w: MmaSpWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`to_mma_sp_layout`: the canonical (values, meta)."""
    _check_layout(w.layout)
    nt, kt = w.values.shape[:2]
    vshape, mshape = _split_shapes(w.layout, nt, kt)
    inv_v = [_VALUES_PERM.index(i) for i in range(len(_VALUES_PERM))]
    inv_m = [_META_PERM.index(i) for i in range(len(_META_PERM))]
    permuted_v = tuple(vshape[i] for i in _VALUES_PERM)
    permuted_m = tuple(mshape[i] for i in _META_PERM)
    vals = w.values.reshape(permuted_v).permute(inv_v).reshape(nt * 16, -1)
    meta = w.meta.reshape(permuted_m).permute(inv_m).reshape(nt * 16, -1)
    codes = _codes(meta, meta.shape[1] * 8)[: w.n, : w.k // 4]
    return vals[: w.n, : w.k // 2].contiguous(), _pack_codes(codes)


def mma_weight(values, meta, layout: str, prepared=None) -> MmaSpWeight:
    """(values, meta) in the mma.sp layout: one of the calling module's Prepared forms (built on
    first use, rebuilt when the weight changes; it costs a second copy of the weight in device
    memory while the module lives), or converted for this call alone for a bare op call."""
    if prepared is None:
        return to_mma_sp_layout(values, meta, layout)
    build = lambda: to_mma_sp_layout(values, meta, layout)  # noqa: E731
    return prepared.get(f"mma.sp {layout}", weight_key(values, meta), build)


# ---------------------------------------------------------------------------------------------
# Glue to torch.ops.llmkern_C (CUDA kernels only in a CUDA build of the extension)
# ---------------------------------------------------------------------------------------------

_OPS = ("sparse24_matmul", "sparse24_mma", "sparse24_mma_s8")


def _has_ops() -> bool:
    return all(cuda_int8.has_op(name) for name in _OPS)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float().contiguous()


def _rows_16b_aligned(x: torch.Tensor) -> torch.Tensor:
    """x contiguous with 16-byte aligned rows (zero-padded along K if needed): the tensor-core
    kernel copies x in 16-byte pieces."""
    x = x.contiguous()
    per16 = 16 // x.element_size()
    if x.shape[1] % per16 or x.data_ptr() % 16:
        x = F.pad(x, (0, -x.shape[1] % per16)).clone()
    return x


def _sm80(*args) -> bool:
    return torch.cuda.get_device_capability(args[0].device) >= (8, 0)


_WHY = "needs a GPU of compute capability 8.0 or newer (mma.sp)"


def _float_x_matmul(x, values, meta, w_scale, bias, prepared):
    """float x with float or int8 (weight-only, ``w_scale`` per channel) values."""
    ops = torch.ops.llmkern_C
    if x.dtype == torch.float32 or x.shape[0] <= DECODE_MAX_M:
        return ops.sparse24_matmul(
            x.contiguous(), values.contiguous(), meta.contiguous(), w_scale, bias
        )
    # int8 weights also take the m16n8k32 fragment order; the kernel widens them to x's dtype.
    w = mma_weight(values, meta, MMA16, prepared)
    return ops.sparse24_mma(_rows_16b_aligned(x), w.values, w.meta, w.n, w.k, w_scale, bias)


def sparse24_matmul_cuda(x, values, meta, bias, prepared=None):
    return _float_x_matmul(x, values, meta, None, _f32(bias), prepared)


def sparse24_w8_matmul_cuda(x, values, meta, w_scale, bias, prepared=None):
    return _float_x_matmul(x, values, meta, _f32(w_scale), _f32(bias), prepared)


def sparse24_w8a8_matmul_cuda(x_q, values, meta, x_scale, w_scale, bias, out_dtype, prepared=None):
    w = mma_weight(values, meta, MMA8, prepared)
    return torch.ops.llmkern_C.sparse24_mma_s8(
        _rows_16b_aligned(x_q),
        w.values,
        w.meta,
        w.n,
        w.k,
        _f32(x_scale),
        _f32(w_scale),
        _f32(bias),
        out_dtype,
    )


def sparse24_w8a8_linear_cuda(x, values, meta, w_scale, bias, prepared=None):
    x_q, x_scale = cuda_int8.quantize_per_token_cuda(x)
    return sparse24_w8a8_matmul_cuda(x_q, values, meta, x_scale, w_scale, bias, x.dtype, prepared)


if _has_ops():
    for _op, _fn in (
        ("sparse24_matmul", sparse24_matmul_cuda),
        ("sparse24_w8_matmul", sparse24_w8_matmul_cuda),
        ("sparse24_w8a8_matmul", sparse24_w8a8_matmul_cuda),
    ):
        register(_op, "cuda", ("cuda",), supports=_sm80, why=_WHY, takes_prepared=True)(_fn)
    # The W8A8 layer: the quantisation kernel of llmkern.cuda.int8, then the mma.sp GEMM.
    if hasattr(cuda_int8, "quantize_per_token_cuda"):
        register(
            "sparse24_w8a8_linear",
            "cuda",
            ("cuda",),
            supports=_sm80,
            why=_WHY,
            takes_prepared=True,
        )(sparse24_w8a8_linear_cuda)
