"""llmkern.nn int8 modules: accuracy against the float layer, agreement with the op references,
the nn.Linear contract (shapes, dtypes, bias, state_dict, to_float, repr), torch.compile, QAT."""

import copy
import io

import pytest
import torch
from torch import nn

from llmkern.cpu import int8 as cpu_int8
from llmkern.nn import Int8Linear, Int8LinearQAT, Int8WeightOnlyLinear
from llmkern.ops import int8 as ops

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def _linear(k, n, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    nn.init.normal_(lin.weight, std=k**-0.5)
    return lin


def _rel_err(y, ref):
    return float((y.detach().float() - ref.detach().float()).norm() / ref.detach().float().norm())


def test_error_vs_float_layer_on_gaussian_data():
    # Module docstring: ~1.1% (W8A8) and ~0.8% (weight-only) relative error for K = 1024. The
    # lower bounds prove quantisation happened; the upper ones that nothing else went wrong.
    lin = _linear(1024, 512)
    x = torch.randn(64, 1024)
    with torch.no_grad():
        ref = lin(x)
        assert 0.009 < _rel_err(Int8Linear.from_float(lin)(x), ref) < 0.0135
        assert 0.0065 < _rel_err(Int8WeightOnlyLinear.from_float(lin)(x), ref) < 0.0095
        assert 0.005 < _rel_err(Int8WeightOnlyLinear.from_float(lin, group_size=64)(x), ref) < 0.008


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_matches_reference(cpu_isa, dtype, bias):
    lin = _linear(77, 45, bias)
    m = Int8Linear.from_float(lin)
    x = torch.randn(3, 5, 77).to(dtype)
    y = m(x)
    assert y.shape == (3, 5, 45) and y.dtype == dtype
    want = ops.w8a8_linear_ref(x.reshape(15, 77), m.qweight, m.weight_scale, m.bias, None, None)
    torch.testing.assert_close(y.reshape(15, 45), want, rtol=0, atol=0)
    # Non-contiguous input with the same values gives the same output.
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.equal(m(xt), y)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("group_size", [0, 16])
def test_weight_only_matches_reference(cpu_isa, dtype, group_size):
    lin = _linear(70, 33)
    m = Int8WeightOnlyLinear.from_float(lin, group_size=group_size)
    x = torch.randn(2, 3, 70).to(dtype)
    y = m(x)
    assert y.shape == (2, 3, 33) and y.dtype == dtype
    x2 = x.reshape(6, 70)
    if cpu_int8.w8_rounds_x(x2, group_size):  # x as the kernel sees it (docs/numerics.md)
        x2 = cpu_int8.round_x_int16(x2).to(dtype)
    want = ops.w8_matmul_ref(x2, m.qweight, m.weight_scale, m.bias, group_size)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.reshape(6, 33), want, rtol=2 * eps, atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("group_size", [0, 16])
def test_weight_only_many_rows_use_the_gemm_path(monkeypatch, dtype, group_size):
    """Above W8_GEMM_ROWS rows (lowered here to 4) the dtypes with a rule on this ISA path
    (fp32 and bf16; bf16 only on AMX) go to torch's GEMM on the dequantised weight; the others
    keep the kernel. Tolerances: fp32 sums in another order (1e-5), bf16 also rounds the
    dequantised weight to bf16 (relative 2^-9, 2e-2 on outputs). The rule is the cpu backend's,
    so the module and the public op compute the same thing."""
    import llmkern.cpu.int8 as cpu_int8

    rules = cpu_int8.w8_gemm_rules()
    assert torch.bfloat16 in rules and torch.float16 not in rules
    for dt in list(rules):
        monkeypatch.setitem(rules, dt, (4, rules[dt][1]))
    m = Int8WeightOnlyLinear.from_float(_linear(70, 33), group_size=group_size)
    x = torch.randn(3, 5, 70).to(dtype)
    x2 = x.reshape(15, 70)
    y = m(x).reshape(15, 33)
    # The kernel (AMX: fp32 at every row count) computes on x rounded to int16.
    xr = cpu_int8.round_x_int16(x2).to(dtype) if cpu_int8.w8_rounds_x(x2, group_size) else x2
    want = ops.w8_matmul_ref(xr, m.qweight, m.weight_scale, m.bias, group_size)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2 * torch.finfo(dtype).eps}
    torch.testing.assert_close(y, want, rtol=tol[dtype], atol=tol[dtype])
    gemm = cpu_int8.w8_gemm(x2, m.qweight, m.weight_scale, group_size, m.bias)
    kernel = torch.ops.llmkern_C.int8_w8_linear(x2, m._packed, m.weight_scale, m.bias, group_size)
    assert torch.equal(y, gemm if dtype in rules else kernel)
    assert torch.equal(ops.w8_matmul(x2, m.qweight, m.weight_scale, m.bias, group_size), y)
    kernel4 = torch.ops.llmkern_C.int8_w8_linear(
        x2[:4], m._packed, m.weight_scale, m.bias, group_size
    )
    assert torch.equal(m(x[:1, :4]).reshape(4, 33), kernel4)  # 4 rows: still the kernel


def test_static_input_scale():
    lin = _linear(40, 24)
    x = torch.randn(6, 40)
    scale = float(x.abs().max()) / 127
    m = Int8Linear.from_float(lin, input_scale=scale)
    assert m.input_scale.item() == pytest.approx(scale) and "static" in repr(m)
    want = ops.w8a8_linear_ref(x, m.qweight, m.weight_scale, m.bias, m.input_scale, None)
    assert torch.equal(m(x), want)
    assert _rel_err(m(x), lin(x).detach()) < 0.03
    # Inputs beyond the calibrated range saturate at +-127 * scale.
    big = Int8Linear.from_float(nn.Linear(40, 1, bias=False), input_scale=scale)
    big.qweight.fill_(1)
    big.weight_scale.fill_(1)
    big.repack()
    assert big(torch.full((1, 40), 1e6)).item() == pytest.approx(40 * 127 * scale, rel=1e-6)
    m.set_input_scale(None)
    assert m.input_scale is None and torch.equal(m(x), Int8Linear.from_float(lin)(x))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="input_scale"):
            m.set_input_scale(bad)


@pytest.mark.parametrize("cls,kw", [(Int8Linear, {}), (Int8Linear, {"input_scale": 0.02}),
                                    (Int8WeightOnlyLinear, {"group_size": 8})])  # fmt: skip
def test_state_dict_round_trip_exact(cls, kw):
    src = cls.from_float(_linear(50, 20), **kw)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = cls(50, 20, **{k: v for k, v in kw.items() if k == "group_size"})
    dst.load_state_dict(torch.load(buf))
    for name, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[name], value), name
    assert "_packed" not in src.state_dict()
    x = torch.randn(4, 50)
    assert torch.equal(dst(x), src(x))
    assert torch.equal(copy.deepcopy(src)(x), src(x))


def test_load_decides_static_or_dynamic_activations():
    static = Int8Linear.from_float(_linear(30, 10), input_scale=0.05)
    dynamic = Int8Linear.from_float(_linear(30, 10, seed=1))
    dynamic.load_state_dict(static.state_dict())
    assert dynamic.input_scale is not None and dynamic.input_scale.item() == pytest.approx(0.05)
    static.load_state_dict(Int8Linear.from_float(_linear(30, 10)).state_dict())
    assert static.input_scale is None


def test_load_rejects_nonfinite_scales():
    sd = Int8Linear.from_float(_linear(30, 10)).state_dict()
    sd["weight_scale"][3] = float("nan")
    with pytest.raises(ValueError, match="weight_scale must be finite"):
        Int8Linear(30, 10).load_state_dict(sd)


@pytest.mark.parametrize("cls", [Int8Linear, Int8WeightOnlyLinear])
def test_to_float_and_contract(cls):
    lin = _linear(24, 12)
    m = cls.from_float(lin)
    assert (m.in_features, m.out_features) == (24, 12)
    back = m.to_float()
    assert isinstance(back, nn.Linear) and back.weight.dtype == torch.float32
    assert torch.equal(back.weight, m.weight)
    assert torch.equal(back.bias, lin.bias.detach())
    # The dequantised weight is within half a step of the original.
    assert ((back.weight - lin.weight).abs() <= m.weight_scale[:, None] / 2 + 1e-7).all()
    assert "in_features=24, out_features=12, bias=True" in repr(m)
    no_bias = cls.from_float(_linear(24, 12, bias=False))
    assert no_bias.bias is None and no_bias.to_float().bias is None


def test_dtype_casts_keep_float32_scales_and_bias():
    m = Int8Linear.from_float(_linear(16, 8), input_scale=0.1)
    bias = m.bias.clone()
    m = m.to(torch.bfloat16).half()
    assert m.weight_scale.dtype == m.bias.dtype == m.input_scale.dtype == torch.float32
    assert torch.equal(m.bias, bias) and m.qweight.dtype == torch.int8
    assert m(torch.randn(2, 16, dtype=torch.float16)).dtype == torch.float16


@pytest.mark.parametrize("cls", [Int8Linear, Int8WeightOnlyLinear])
def test_bad_module_input(cls):
    m = cls.from_float(_linear(16, 8))
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 16\]"):
        m(torch.randn(2, 15))
    with pytest.raises(TypeError, match="float32/bfloat16/float16"):
        m(torch.ones(2, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="must not be empty"):
        m(torch.randn(0, 16))
    with pytest.raises(ValueError, match="input is on meta but the layer's weights are on cpu"):
        m(torch.randn(2, 16, device="meta"))
    with pytest.raises(TypeError, match="nn.Linear"):
        cls.from_float(nn.Conv1d(2, 2, 1))


def test_backend_env_is_honoured(monkeypatch):
    m = Int8Linear.from_float(_linear(64, 32))
    x = torch.randn(5, 64)
    fast = m(x)
    monkeypatch.setenv("LLMKERN_BACKEND", "reference")
    assert torch.equal(m(x), fast)  # same contract, reference backend
    m._packed = None  # the reference path needs no packed weight
    assert torch.equal(m(x), fast)


def test_torch_compile_fullgraph():
    model = nn.Sequential(
        Int8Linear.from_float(_linear(48, 32)),
        nn.ReLU(),
        Int8WeightOnlyLinear.from_float(_linear(32, 20), group_size=8),
        Int8Linear.from_float(_linear(20, 10), input_scale=0.05),
    )
    x = torch.randn(3, 48)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)


def test_qat_forward_gradients_and_conversion():
    lin = _linear(96, 40)
    qat = Int8LinearQAT.from_float(lin)
    x = torch.randn(2, 7, 96, requires_grad=True)
    y = qat(x)
    assert 0.005 < _rel_err(y, lin(x)) < 0.03  # quantised forward
    # Inference module: identical quantisation, GEMM exact in int32 -> float rounding only.
    int8 = qat.to_int8()
    torch.testing.assert_close(int8(x.detach()), y.detach(), rtol=1e-5, atol=1e-5)
    # Straight-through estimator: gradients of F.linear at the fake-quantised operands.
    g = torch.randn_like(y)
    y.backward(g)
    w_fq = ops.dequantize_weight(*ops.quantize_weight(lin.weight.detach()), 0)
    x_q, x_s = ops.quantize_per_token_ref(x.detach().reshape(14, 96))
    x_fq = x_q.float() * x_s[:, None]
    torch.testing.assert_close(x.grad.reshape(14, 96), g.reshape(14, 40) @ w_fq)
    torch.testing.assert_close(qat.weight.grad, g.reshape(14, 40).T @ x_fq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qat.bias.grad, g.reshape(14, 40).sum(0))
    # A training step moves the float master weight; conversion follows it.
    with torch.no_grad():
        qat.weight -= 0.5 * qat.weight.grad
    assert not torch.equal(qat.to_int8().qweight, int8.qweight)
    assert torch.equal(qat.to_float().weight, qat.weight.detach())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_qat_half_precision_matches_int8(dtype):
    qat = Int8LinearQAT.from_float(_linear(64, 16))
    x = torch.randn(4, 64).to(dtype)
    y = qat(x)
    assert y.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(qat.to_int8()(x), y, rtol=2 * eps, atol=2 * eps)


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [Int8Linear, Int8WeightOnlyLinear])
def test_module_on_cuda_matches_cpu(cls):
    m = cls.from_float(_linear(256, 96))
    x = torch.randn(9, 256)
    want = m(x)
    m = m.to("cuda")
    assert m._packed is None
    torch.testing.assert_close(m(x.cuda()).cpu(), want, rtol=1e-4, atol=1e-4)
