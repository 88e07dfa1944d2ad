"""CUDA backend of the 2:4 ops: the mma.sp weight layout (CPU, exact) and the kernels (GPU).

The layout tests decode a packed weight the way the tensor core reads it, written out from the
PTX ISA fragment descriptions (which lane holds which A value, which lane's metadata word and
which bits describe its group), independently of the permutations that build the layout.
"""

import pytest
import torch

from llmkern.cuda import sparse24 as cs
from llmkern.ops import sparse24 as ops


def _random_24(n, k, dtype, gen=None):
    """A random 2:4 weight with every kind of group: 2 non-zeros at random positions, plus
    some groups with 1 or 0 non-zeros (filled up by compress_24 with zeros)."""
    w = torch.randn(n, k, generator=gen)
    if dtype == torch.int8:
        w = torch.randint(-128, 128, (n, k), generator=gen).float()
        w[w == 0] = 1
    w = ops.prune_24(w, torch.rand(n, k, generator=gen))
    sparse_groups = torch.rand(n, k // 4, generator=gen) < 0.1
    w.view(n, k // 4, 4)[sparse_groups, 2:] = 0
    w.view(n, k // 4, 4)[torch.rand(n, k // 4, generator=gen) < 0.05] = 0
    return w.to(dtype)


def _emulate_mma16(w: cs.MmaSpWeight) -> torch.Tensor:
    """Dense [N_pad, K_pad] as mma.sp.m16n8k32 (selector 0) sees the packed weight."""
    nt, kt = w.values.shape[:2]
    words = w.meta.reshape(nt, kt, 16, 4).to(torch.int64)
    words = words[..., 0] | words[..., 1] << 8 | words[..., 2] << 16 | words[..., 3] << 24
    dense = torch.zeros(nt * 16, kt * 32, dtype=w.values.dtype)
    for i in range(nt):
        for j in range(kt):
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for r in range(4):
                    row = g + 8 * (r % 2)  # a0,a1: row g; a2,a3: g + 8; a4..a7 repeat
                    group = t + 4 * (r // 2)  # 4-wide chunk of the 32-wide K-tile
                    # Lanes 4g and 4g+1 hold the metadata of rows g and g+8: lane 4g+p covers
                    # chunks 4p..4p+3, row g in bits 0-15 and row g+8 in bits 16-31.
                    word = int(words[i, j, 2 * g + group // 4])
                    for h in range(2):
                        bit = 16 * (r % 2) + 4 * (group % 4) + 2 * h
                        col = 4 * group + ((word >> bit) & 3)
                        dense[16 * i + row, 32 * j + col] = w.values[i, j, lane, 2 * r + h]
    return dense


def _emulate_mma8(w: cs.MmaSpWeight) -> torch.Tensor:
    """Dense [N_pad, K_pad] as mma.sp.m16n8k64 (s8, selector 0) sees the packed weight."""
    nt, kt = w.values.shape[:2]
    words = w.meta.reshape(nt, kt, 32, 4).to(torch.int64)
    words = words[..., 0] | words[..., 1] << 8 | words[..., 2] << 16 | words[..., 3] << 24
    dense = torch.zeros(nt * 16, kt * 64, dtype=w.values.dtype)
    for i in range(nt):
        for j in range(kt):
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for e in range(16):
                    r, b = e // 4, e % 4
                    row = g + 8 * (r % 2)
                    ccol = 4 * t + 16 * (r // 2) + b  # compressed column in the K-tile
                    group = ccol // 2
                    # Lane 4g+u holds row g + 8*(u % 2), groups 8*(u // 2) .. +7, 4 bits each.
                    owner = 4 * g + (r % 2) + 2 * (group // 8)
                    bit = 4 * (group % 8) + 2 * (ccol % 2)
                    col = 4 * group + ((int(words[i, j, owner]) >> bit) & 3)
                    dense[16 * i + row, 64 * j + col] = w.values[i, j, lane, e]
    return dense


SHAPES = [(16, 32), (20, 68), (130, 132), (33, 256)]


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("layout", cs.LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int8, torch.float32])
def test_mma_sp_layout_round_trip(layout, n, k, dtype):
    values, meta = ops.compress_24(_random_24(n, k, dtype))
    w = cs.to_mma_sp_layout(values, meta, layout)
    tile_k = 32 if layout == cs.MMA16 else 64
    assert w.values.shape[:3] == (-(-n // 128) * 8, -(-k // 128) * 128 // tile_k, 32)
    back_values, back_meta = cs.from_mma_sp_layout(w)
    assert torch.equal(back_values, values)
    assert torch.equal(back_meta, meta)


@pytest.mark.parametrize("n,k", [(16, 32), (20, 68), (17, 132)])
def test_mma16_layout_is_what_the_tensor_core_reads(n, k):
    w_dense = _random_24(n, k, torch.float16)
    values, meta = ops.compress_24(w_dense)
    packed = cs.to_mma_sp_layout(values, meta, cs.MMA16)
    dense = _emulate_mma16(packed)
    assert torch.equal(dense[:n, :k], w_dense)
    assert not dense[n:].any() and not dense[:, k:].any()


@pytest.mark.parametrize("n,k", [(16, 64), (20, 68), (17, 196)])
def test_mma8_layout_is_what_the_tensor_core_reads(n, k):
    w_dense = _random_24(n, k, torch.int8)
    values, meta = ops.compress_24(w_dense)
    packed = cs.to_mma_sp_layout(values, meta, cs.MMA8)
    dense = _emulate_mma8(packed)
    assert torch.equal(dense[:n, :k], w_dense)
    assert not dense[n:].any() and not dense[:, k:].any()


@pytest.mark.parametrize("layout", cs.LAYOUTS)
def test_padding_codes_are_valid(layout):
    """mma.sp leaves 0b0000, 0b0101, 0b1010, 0b1111 undefined: padding must avoid them, also
    in the unused high nibble that canonical meta has when K % 8 == 4."""
    values, meta = ops.compress_24(_random_24(3, 20, torch.float16))
    packed = cs.to_mma_sp_layout(values, meta, layout)
    codes = torch.stack((packed.meta & 0xF, packed.meta >> 4), dim=-1)
    assert bool(((codes & 3) < (codes >> 2)).all())


def test_invalid_layout_name():
    values, meta = ops.compress_24(_random_24(4, 8, torch.float16))
    with pytest.raises(ValueError, match="layout"):
        cs.to_mma_sp_layout(values, meta, "m16n8k16")


def test_mma_weight_form_follows_in_place_changes():
    """The mma.sp layout is one of a module's Prepared forms: built once, rebuilt when the weight
    changes in place or is another tensor; without Prepared (a bare op call) built per call."""
    from llmkern.backends import Prepared

    values, meta = ops.compress_24(_random_24(8, 64, torch.float16))
    prepared = Prepared()
    first = cs.mma_weight(values, meta, cs.MMA16, prepared)
    assert cs.mma_weight(values, meta, cs.MMA16, prepared) is first
    values.mul_(2)
    second = cs.mma_weight(values, meta, cs.MMA16, prepared)
    assert second is not first
    assert torch.equal(cs.from_mma_sp_layout(second)[0], values)
    assert cs.mma_weight(values, meta.clone(), cs.MMA16, prepared) is not second
    assert cs.mma_weight(values, meta, cs.MMA16) is not cs.mma_weight(values, meta, cs.MMA16)
    prepared.clear()
    assert len(prepared) == 0


# ---------------------------------------------------------------------------------------------
# GPU: the kernels against the reference
# ---------------------------------------------------------------------------------------------

M_SIZES = [1, 3, 5, 16, 17, 128, 300]
NK = [(72, 100), (256, 520)]  # N and K not multiples of 64 (K % 8 == 4 in the first)
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(out, ref, dtype):
    """Error relative to the output's magnitude (accumulation order differs from the
    reference; the final rounding to the output dtype dominates for fp16/bf16)."""
    err = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item() + 1e-6
    assert err <= TOL[dtype] * scale, f"max error {err} vs scale {scale}"


def _cuda_available():
    from llmkern.backends import kernels

    if "cuda" not in kernels("sparse24_matmul"):
        pytest.skip("the CUDA build of llmkern._C with the sparse24 kernels is not present")


def _reference(op, *args):
    """The reference on CPU copies (integer matmul has no CUDA kernel), back on the GPU."""
    cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    return op(*cpu, backend="reference").cuda()


def _compressed_cuda(n, k, dtype):
    return [t.cuda() for t in ops.compress_24(_random_24(n, k, dtype))]


@pytest.mark.gpu
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_sparse24_matmul_cuda(m, n, k, dtype, with_bias):
    _cuda_available()
    values, meta = _compressed_cuda(n, k, dtype)
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    out = ops.sparse24_matmul(x, values, meta, bias, backend="cuda")
    assert out.dtype == dtype and out.shape == (m, n)
    _close(out, _reference(ops.sparse24_matmul, x, values, meta, bias), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_sparse24_w8_matmul_cuda(m, n, k, dtype):
    _cuda_available()
    values, meta = _compressed_cuda(n, k, torch.int8)
    w_scale = torch.rand(n, device="cuda") * 0.02 + 1e-3
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    out = ops.sparse24_w8_matmul(x, values, meta, w_scale, bias, backend="cuda")
    assert out.dtype == dtype and out.shape == (m, n)
    _close(out, _reference(ops.sparse24_w8_matmul, x, values, meta, w_scale, bias), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("n,k", [(72, 112), (256, 528)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sparse24_w8a8_matmul_cuda(m, n, k, out_dtype):
    _cuda_available()
    values, meta = _compressed_cuda(n, k, torch.int8)
    x_q = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
    x_scale = torch.rand(m, device="cuda") * 0.01 + 1e-4
    w_scale = torch.rand(n, device="cuda") * 0.01 + 1e-4
    bias = torch.randn(n, device="cuda")
    args = (x_q, values, meta, x_scale, w_scale, bias, out_dtype)
    out = ops.sparse24_w8a8_matmul(*args, backend="cuda")
    ref = _reference(ops.sparse24_w8a8_matmul, *args)
    assert out.dtype == out_dtype and out.shape == (m, n)
    if out_dtype == torch.float32:
        # int32 accumulation is exact and the epilogue is rounded like the reference.
        assert torch.equal(out, ref)
    else:
        _close(out, ref, out_dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [2, 40])
def test_sparse24_matmul_cuda_non_contiguous_x(m):
    _cuda_available()
    n, k = 64, 132
    values, meta = _compressed_cuda(n, k, torch.bfloat16)
    x = torch.randn(m, k + 3, device="cuda", dtype=torch.bfloat16)[:, 1 : k + 1]
    out = ops.sparse24_matmul(x, values, meta, backend="cuda")
    _close(out, _reference(ops.sparse24_matmul, x, values, meta, None), torch.bfloat16)
