"""The C++ CPU int8 kernels (backend "cpu") against the references of llmkern/ops/int8.py, on
every CPU ISA path (fixture ``cpu_isa``), and the argument checks of the int8 ops.

Tolerances: quantisation and the W8A8 int32 accumulation are exact. The W8A8 epilogue performs
the reference's float32 operations in the reference's order, so it is allowed 2 ulp of the
output dtype (it is in practice bit-exact). Weight-only sums float32 products in another order
than the reference's matmul: 1e-5 of the output's magnitude for float32 outputs, plus one
rounding step of bf16 / fp16 outputs, against the reference on x as the kernel sees it (rounded
to int16 at few rows on AVX2, llmkern.cpu.int8.round_x_int16).
"""

import math

import pytest
import torch

from llmkern.cpu import int8 as cpu_int8
from llmkern.ops import int8 as ops
from tests.conftest import supported_isas

CPU = {"backend": "cpu"}
FLOATS = [torch.float32, torch.bfloat16, torch.float16]
EPS = {dt: torch.finfo(dt).eps for dt in FLOATS}

# (M, K, N): M = 1 and tall M, K and N off multiples of 4/16/64, one N below a vector.
GEMM_SHAPES = [(1, 1, 1), (1, 5, 3), (2, 67, 100), (7, 33, 16), (13, 300, 129), (70, 130, 70)]


def _act(m, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Rows spanning six decades, so per-row scales matter.
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m)[:, None]
    return x.to(dtype)


def _noncontiguous(t):
    """The same values as ``t`` in a strided view (every other column of a wider tensor)."""
    wide = torch.empty(t.shape[0], 2 * t.shape[1], dtype=t.dtype)
    wide[:, ::2] = t
    return wide[:, ::2]


def _assert_epilogue_close(out, want):
    assert out.dtype == want.dtype
    eps = EPS[out.dtype]
    torch.testing.assert_close(
        out.float(), want.float(), rtol=2 * eps, atol=2 * eps, equal_nan=True
    )


@pytest.mark.parametrize("m,k", [(1, 1), (3, 17), (37, 100), (5, 1000), (130, 65)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_quantize_per_token_exact(cpu_isa, m, k, dtype):
    x = _act(m, k, dtype)
    q, s = ops.quantize_per_token(x, **CPU)
    q_ref, s_ref = ops.quantize_per_token_ref(x)
    assert torch.equal(q, q_ref)
    assert torch.equal(s, s_ref)
    q2, s2 = ops.quantize_per_token(_noncontiguous(x), **CPU)
    assert torch.equal(q2, q_ref) and torch.equal(s2, s_ref)


def test_quantize_per_token_special_rows(cpu_isa):
    x = torch.randn(5, 40)
    x[1] = 0
    x[2, 7] = float("nan")
    x[3, 39] = float("-inf")
    x[4, 0] = 1e30  # one huge value: the rest of its row rounds to 0
    q, s = ops.quantize_per_token(x, **CPU)
    q_ref, s_ref = ops.quantize_per_token_ref(x)
    assert torch.equal(q, q_ref)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)
    assert s[1] == 1 and torch.isnan(s[2]) and torch.isnan(s[3]) and (q[2:4] == 0).all()


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_w8a8_int32_accumulation_exact(cpu_isa, m, k, n):
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    out = ops.w8a8_matmul(x_q, w_q, torch.ones(m), torch.ones(n), **CPU)
    # Unit scales and no bias: out is float32(acc), exact iff the int32 sums are.
    assert torch.equal(out, ops.int_matmul_ref(x_q, w_q).float())


@pytest.mark.parametrize("m", [2, 18])  # the VNNI and the AMX kernel (whose u8 sums wrap too)
def test_w8a8_int32_extremes_at_max_k(cpu_isa, m):
    k = ops.MAX_K_W8A8  # |acc| = 127 * 128 * 2**17 < 2**31: the largest sum the check allows
    x_q = torch.full((m, k), -127, dtype=torch.int8)
    x_q[1::2] = 127
    w_q = torch.full((17, k), -128, dtype=torch.int8)
    out = ops.w8a8_matmul(x_q, w_q, torch.ones(m), torch.ones(17), **CPU)
    want = torch.tensor([[127.0 * 128 * k], [-127.0 * 128 * k]]).repeat(m // 2, 17)
    assert torch.equal(out, want)


@pytest.mark.parametrize("m", [1, 2, 4, 5])
@pytest.mark.parametrize("min_weight", [False, True])
def test_w8a8_few_rows_exact(cpu_isa, m, min_weight):
    # Few rows take AVX2's vpmaddubsw kernel (|x| times w with x's sign moved onto w) unless a
    # weight is -128, which vpsignb cannot negate; both routes must give the exact int32 sums,
    # x = -128 and the largest pair sums (2 * 128 * 127) included. N = 200 ends in a partial panel.
    k, n = 301, 200
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    x_q[:, :8] = -128
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    w_q[:, :8] = torch.tensor([127, -127] * 4, dtype=torch.int8)
    if min_weight:
        w_q[n // 2, k // 2] = -128
    out = ops.w8a8_matmul(x_q, w_q, torch.ones(m), torch.ones(n), **CPU)
    assert torch.equal(out, ops.int_matmul_ref(x_q, w_q).float())


@pytest.mark.parametrize("m", [4, 8, 16, 17, 32, 33, 47, 64, 193])
@pytest.mark.parametrize("k,n", [(4, 16), (64, 48), (200, 64), (1024, 80)])
def test_w8a8_row_tiles_exact(cpu_isa, m, k, n):
    # From 4 rows AMX multiplies 16-row x 64-k tiles: row counts around 16 / 32 (and one row
    # past a 192-row block), K below, at and past 64 (the k % 64 tail runs with vpdpbusd), and
    # 1, 3, 4 and 5 channel vectors of 16 per panel.
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    out = ops.w8a8_matmul(x_q, w_q, torch.ones(m), torch.ones(n), **CPU)
    assert torch.equal(out, ops.int_matmul_ref(x_q, w_q).float())


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("bias", [False, True])
def test_w8a8_matmul_epilogue(cpu_isa, m, k, n, out_dtype, bias):
    x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    x_scale = (torch.rand(m) + 0.01) / 127
    w_scale = (torch.rand(n) + 0.01) / 127
    b = torch.randn(n).to(out_dtype) if bias else None
    out = ops.w8a8_matmul(x_q, w_q, x_scale, w_scale, b, out_dtype, **CPU)
    _assert_epilogue_close(out, ops.w8a8_matmul_ref(x_q, w_q, x_scale, w_scale, b, out_dtype))


def test_w8a8_matmul_noncontiguous(cpu_isa):
    x_q = torch.randint(-127, 128, (9, 45), dtype=torch.int8)
    w_q = torch.randint(-128, 128, (45, 30), dtype=torch.int8).T  # [30, 45], column-major
    x_scale, w_scale = torch.rand(9), torch.rand(30)
    out = ops.w8a8_matmul(_noncontiguous(x_q), w_q, x_scale, w_scale, None, torch.float32, **CPU)
    _assert_epilogue_close(
        out, ops.w8a8_matmul_ref(x_q, w_q, x_scale, w_scale, None, torch.float32)
    )


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("static", [False, True])
def test_w8a8_linear(cpu_isa, m, k, n, dtype, static):
    from llmkern.cpu.int8 import pack_w8a8

    x = _act(m, k, dtype)
    w_q, w_scale = ops.quantize_weight(torch.randn(n, k))
    b = torch.randn(n)
    # A static scale below most rows' absmax / 127, so large values saturate.
    x_scale = torch.tensor(float(x.float().abs().max()) / 1000) if static else None
    want = ops.w8a8_linear_ref(x, w_q, w_scale, b, x_scale, None)
    for packed in (None, pack_w8a8(w_q)):
        out = ops.w8a8_linear(x, w_q, w_scale, b, x_scale, packed, **CPU)
        _assert_epilogue_close(out, want)
    out = ops.w8a8_linear(_noncontiguous(x), w_q, w_scale, b, x_scale, **CPU)
    _assert_epilogue_close(out, want)


def test_w8a8_linear_nonfinite_rows_give_nan(cpu_isa):
    x = torch.randn(3, 20)
    x[1, 4] = float("inf")
    w_q, w_scale = ops.quantize_weight(torch.randn(5, 20))
    for x_scale in (None, torch.tensor(0.01)):
        out = ops.w8a8_linear(x, w_q, w_scale, None, x_scale, **CPU)
        assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()


def test_w8a8_linear_static_scale_saturates_beyond_int32(cpu_isa):
    # x / x_scale ~ 1e12 overflows int32: the kernels must clamp in float first.
    x = torch.tensor([[1.0, 2.0, -3e-13, 0.0]])
    w_q = torch.ones(2, 4, dtype=torch.int8)
    x_scale = torch.tensor(1e-12)
    out = ops.w8a8_linear(x, w_q, torch.ones(2), None, x_scale, **CPU)
    assert torch.equal(out, ops.w8a8_linear_ref(x, w_q, torch.ones(2), None, x_scale, None))
    assert out[0, 0].item() == pytest.approx(254e-12)  # q = [127, 127, 0, 0]


def _w8_want(x, w_q, w_scale, b, group_size):
    """The reference on x as the kernels see it: rounded to int16 at few rows (AVX2, AVX-512
    VNNI)."""
    xr = cpu_int8.round_x_int16(x).to(x.dtype) if cpu_int8.w8_rounds_x(x, group_size) else x
    return ops.w8_matmul_ref(xr, w_q, w_scale, b, group_size)


def _assert_w8_close(out, want):
    assert out.dtype == want.dtype
    tol = 1e-5 * float(want.float().abs().max())
    torch.testing.assert_close(out.float(), want.float(), rtol=2 * EPS[out.dtype], atol=tol)


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES + [(16, 64, 48), (3, 40, 200), (3, 300, 40)])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("group_size", [0, 7, 32, 128])
def test_w8_matmul(cpu_isa, m, k, n, dtype, group_size):
    x = torch.randn(m, k).to(dtype)
    w_q, w_scale = ops.quantize_weight(torch.randn(n, k), group_size)
    b = torch.randn(n)
    out = ops.w8_matmul(x, w_q, w_scale, b, group_size, **CPU)
    _assert_w8_close(out, _w8_want(x, w_q, w_scale, b, group_size))


@pytest.mark.parametrize("group_size", [0, 16])
def test_w8_linear_packed_and_noncontiguous(cpu_isa, group_size):
    from llmkern.cpu.int8 import pack_w8

    x = torch.randn(11, 80)
    w_q, w_scale = ops.quantize_weight(torch.randn(33, 80), group_size)
    packed = pack_w8(w_q, w_scale, group_size)
    want = _w8_want(x, w_q, w_scale, None, group_size)
    for xx in (x, _noncontiguous(x)):
        _assert_w8_close(ops.w8_linear(xx, w_q, w_scale, None, group_size, packed, **CPU), want)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("group_size", [0, 128, 64])
def test_w8_int16_rounding_rows(cpu_isa, dtype, group_size):
    """Up to W8_INT16_ROWS[isa] rows the AVX2, AVX-512 VNNI and AMX weight-only kernels
    compute on round_x_int16(x), one row more they do not (AMX: at every row count, checked past
    the VNNI limit), and no other ISA rounds, nor scale groups that split a block: csrc and
    llmkern.cpu.int8 agree (the kernel is called directly: the op hands many rows to torch's
    GEMM first, and w8_rounds_x knows it). Each block holds one large value whose weights are
    0, so rounding moves the output by ~1e-3 relative, far beyond the comparison's 1e-5."""
    k, n = 300, 24
    w_q, w_scale = ops.quantize_weight(torch.randn(n, k), group_size)
    w_q[:, :: cpu_int8.W8_X_BLOCK] = 0
    packed = cpu_int8.pack_w8(w_q, w_scale, group_size)
    limit = cpu_int8.W8_INT16_ROWS.get(cpu_isa, 0)
    assert cpu_int8.w8_int16_rows() == limit
    vnni_limit = cpu_int8.W8_INT16_ROWS["avx512_vnni"]
    rows = {1, 3, vnni_limit + 1} if limit == math.inf else {1, max(limit, 1), limit + 1}
    for m in sorted(rows):
        x = torch.randn(m, k)
        x[:, :: cpu_int8.W8_X_BLOCK] = 500.0
        x = x.to(dtype)
        rounds = m <= limit and group_size != 64
        if not cpu_int8.w8_uses_gemm(x):
            assert cpu_int8.w8_rounds_x(x, group_size) == rounds
        out = torch.ops.llmkern_C.int8_w8_linear(x, packed, w_scale, None, group_size)
        exact = ops.w8_matmul_ref(x, w_q, w_scale, None, group_size)
        xr = cpu_int8.round_x_int16(x).to(dtype)
        rounded = ops.w8_matmul_ref(xr, w_q, w_scale, None, group_size)
        _assert_w8_close(out, rounded if rounds else exact)
        with pytest.raises(AssertionError):
            _assert_w8_close(out, exact if rounds else rounded)


@pytest.mark.parametrize("m", [1, 3, 8])
def test_w8_int16_extreme_values(cpu_isa, m):
    """Every weight -128 and |x| rounding to 32767: the largest int32 block sums (128 * 128 *
    32767 < 2^31), over several blocks, a partial one, odd K and a 48-channel last panel."""
    n, k = 112, 4101
    w_q = torch.full((n, k), -128, dtype=torch.int8)
    x = torch.where(torch.rand(m, k) < 0.5, -1.0, 1.0) * (1 - 2.0**-17)
    out = ops.w8_matmul(x, w_q, torch.ones(n), None, 0, **CPU)
    if cpu_int8.w8_rounds_x(x, 0):
        assert (cpu_int8.round_x_int16(x).abs().amax() * 2.0**15).item() == 32767
    torch.testing.assert_close(out, _w8_want(x, w_q, torch.ones(n), None, 0), rtol=1e-6, atol=0)


@pytest.mark.skipif("amx" not in supported_isas(), reason="needs AMX-INT8 tiles")
@pytest.mark.parametrize("m", [2, 3, 5, 8, 9, 16, 23, 200, 385])
@pytest.mark.parametrize(
    "k,n,group_size", [(4101, 112, 0), (300, 24, 256), (1000, 77, 128), (64, 200, 0)]
)
def test_w8_amx_tiles_match_vpdpwssd_to_the_bit(m, k, n, group_size):
    """The AMX weight-only kernel (from kAmxW8Rows rows) splits int16 x into two signed bytes
    and must give the vpdpwssd kernel's int32 block sums, so the same outputs to the bit: row
    tiles of 8 (and chunks of 192) with ragged ends, K ending mid-step, narrow last panels,
    grouped scales, and x spanning the int16 range (every value rounds to +-32767 in some rows)."""
    from llmkern import _ext

    g = torch.Generator().manual_seed(m * 7 + k)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    shape = (n,) if group_size == 0 else (n, -(-k // group_size))
    w_scale = torch.rand(shape, generator=g) + 0.01
    packed = cpu_int8.pack_w8(w_q, w_scale, group_size)
    x = torch.randn(m, k, generator=g) * torch.logspace(-2, 2, m)[:, None]
    x[::3] = torch.where(x[::3] < 0, -1.0, 1.0)  # absmax rows: q = +-32767 throughout
    b = torch.randn(n, generator=g)
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        for isa in ("amx", "avx512_vnni"):
            _ext._C.set_isa(isa)
            try:
                outs[isa] = torch.ops.llmkern_C.int8_w8_linear(xd, packed, w_scale, b, group_size)
            finally:
                _ext._C.set_isa(None)
        assert torch.equal(outs["amx"], outs["avx512_vnni"])
        want = ops.w8_matmul_ref(cpu_int8.round_x_int16(xd).to(dtype), w_q, w_scale, b, group_size)
        _assert_w8_close(outs["amx"], want)


def test_w8_int16_rounding_rule():
    """round_x_int16 against the rule written out: power-of-two block scales, half-even, bf16
    exact within 2^7 of its block's absmax, error <= 2^-14 absmax."""
    x = torch.randn(3, 300) * torch.logspace(-3, 3, 300)
    xr = cpu_int8.round_x_int16(x)
    for blk in range(3):
        cols = slice(blk * 128, (blk + 1) * 128)
        absmax = x[:, cols].abs().amax(1, keepdim=True)
        assert ((xr[:, cols] - x[:, cols]).abs() <= 2.0**-14 * absmax).all()
    assert torch.equal(cpu_int8.round_x_int16(torch.tensor([[3 * 2.0**-16, 1.0, -0.5]])),
                       torch.tensor([[4 * 2.0**-16, 1.0, -0.5]]))  # fmt: skip
    near = torch.tensor([[1.0, 2.0**-7, -1.9921875, 0.0]]).to(torch.bfloat16)
    assert torch.equal(cpu_int8.round_x_int16(near), near.float())
    assert torch.equal(cpu_int8.round_x_int16(torch.zeros(1, 5)), torch.zeros(1, 5))


@pytest.mark.parametrize("case", ["nan", "inf", "tiny block"])
def test_w8_int16_path_leaves_special_rows_to_float(cpu_isa, case):
    """x the int16 rounding cannot carry (non-finite, or a block below 2^-100 whose scale would
    underflow) runs the fp32 kernel: NaN where the reference has NaN, tiny values kept."""
    k, n = 200, 20
    x = torch.randn(2, k)
    if case == "tiny block":
        x[1] *= 1e-35
    else:
        x[1, 150] = float(case)
    w_q, w_scale = ops.quantize_weight(torch.randn(n, k))
    assert not cpu_int8.w8_rounds_x(x, 0)
    out = ops.w8_matmul(x, w_q, w_scale, None, 0, **CPU)
    want = ops.w8_matmul_ref(x, w_q, w_scale, None, 0)
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    for row in range(2):
        if not torch.isnan(want[row]).any():
            atol = 1e-5 * float(want[row].abs().max())
            torch.testing.assert_close(out[row], want[row], rtol=1e-5, atol=atol)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before any kernel runs
# ---------------------------------------------------------------------------------------------

XQ = torch.zeros(2, 8, dtype=torch.int8)
WQ = torch.zeros(3, 8, dtype=torch.int8)
XS, WS = torch.ones(2), torch.ones(3)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ops.quantize_per_token(torch.zeros(2, 3, dtype=torch.int32)), TypeError, "x must"),
        (lambda: ops.quantize_per_token(torch.zeros(0, 3)), ValueError, "x must not be empty"),
        (lambda: ops.quantize_per_token(torch.zeros(3)), ValueError, "x must be 2-D"),
        (lambda: ops.w8a8_matmul(XQ.float(), WQ, XS, WS), TypeError, "x_q must"),
        (lambda: ops.w8a8_matmul(XQ, WQ[:, :7], XS, WS), ValueError, "w_q must have shape"),
        (lambda: ops.w8a8_matmul(XQ, WQ, torch.ones(3), WS), ValueError, "x_scale must have shape"),
        (lambda: ops.w8a8_matmul(XQ, WQ, XS, torch.ones(4)), ValueError, "w_scale must have shape"),
        (lambda: ops.w8a8_matmul(XQ, WQ, XS, WS.double()), TypeError, "w_scale must"),
        (
            lambda: ops.w8a8_matmul(XQ, WQ, XS, torch.tensor([1, float("nan"), 1])),
            ValueError,
            "w_scale must be finite",
        ),
        (
            lambda: ops.w8a8_matmul(XQ, WQ, XS, WS, torch.ones(2)),
            ValueError,
            "bias must have shape",
        ),
        (lambda: ops.w8a8_matmul(XQ, WQ, XS, WS, out_dtype=torch.int32), ValueError, "out_dtype"),
        (lambda: ops.w8a8_matmul(XQ, WQ.to("meta"), XS, WS), ValueError, "one device"),
        (lambda: ops.w8a8_matmul(XQ[:0], WQ, XS[:0], WS), ValueError, "x_q must not be empty"),
        (
            lambda: ops.w8a8_matmul(
                torch.zeros(1, ops.MAX_K_W8A8 + 1, dtype=torch.int8),
                torch.zeros(1, ops.MAX_K_W8A8 + 1, dtype=torch.int8),
                torch.ones(1),
                torch.ones(1),
            ),
            ValueError,
            "int32 accumulation could overflow",
        ),
        (
            lambda: ops.w8_matmul(torch.ones(2, 8), WQ, torch.ones(3), group_size=-1),
            ValueError,
            "group_size",
        ),
        (
            lambda: ops.w8_matmul(torch.ones(2, 8), WQ, torch.ones(3, 2), group_size=0),
            ValueError,
            "w_scale must have shape",
        ),
        (
            lambda: ops.w8_matmul(torch.ones(2, 7), WQ, torch.ones(3)),
            ValueError,
            "x must have shape",
        ),
        (
            lambda: ops.w8_matmul(torch.ones(2, 8), WQ, torch.tensor([1.0, float("inf"), 1])),
            ValueError,
            "w_scale must be finite",
        ),
        (
            lambda: ops.w8a8_linear(torch.ones(2, 8), WQ, WS, x_scale=torch.tensor(0.0)),
            ValueError,
            "x_scale .static. must be finite and > 0",
        ),
        (
            lambda: ops.w8a8_linear(torch.ones(2, 8), WQ, WS, x_scale=torch.tensor(float("nan"))),
            ValueError,
            "x_scale",
        ),
        (
            lambda: ops.w8a8_linear(torch.ones(2, 8), WQ, WS, x_scale=torch.ones(2)),
            ValueError,
            "one per-tensor value",
        ),
        (
            lambda: ops.w8a8_linear(torch.ones(2, 8), WQ, WS, packed=torch.ones(64)),
            TypeError,
            "packed must",
        ),
        (
            lambda: ops.w8a8_linear(torch.ones(2, 8, dtype=torch.float64), WQ, WS),
            TypeError,
            "x must",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_packed_weight_of_another_layout_is_rejected(needs_ext):
    from llmkern.cpu.int8 import pack_w8, pack_w8a8

    x = torch.randn(2, 8)
    w_q, w_scale = ops.quantize_weight(torch.randn(3, 8))
    with pytest.raises(RuntimeError, match="not a packed W8A8 weight"):
        ops.w8a8_linear(x, w_q, w_scale, packed=pack_w8(w_q, w_scale), **CPU)
    corrupt = pack_w8a8(w_q)
    corrupt[70:] = 0
    corrupt = corrupt[:-4]  # wrong length for its header
    with pytest.raises(RuntimeError, match="not a packed W8A8 weight"):
        ops.w8a8_linear(x, w_q, w_scale, packed=corrupt, **CPU)
    other = pack_w8a8(torch.zeros(3, 9, dtype=torch.int8))  # same N, another K
    with pytest.raises(RuntimeError, match=r"x must be \[M, 9\]"):
        ops.w8a8_linear(x, w_q, w_scale, packed=other, **CPU)
