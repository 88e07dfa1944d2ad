"""llmkern.nn.Sparse24Linear: construction, forward in every form, dense fallback, state_dict,
training with a fixed mask, reprune, torch.compile, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkern.nn import Sparse24Linear
from llmkern.ops import sparse24 as s24


def masked_linear(in_f=30, out_f=11, bias=True, dtype=torch.float32):
    torch.manual_seed(1)
    return nn.Linear(in_f, out_f, bias=bias).to(dtype)


def is_24(w):
    k = w.shape[1]
    wp = F.pad(w, (0, -k % 4))
    return s24.first_violation(wp) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("in_f", [32, 30])  # 30: K padded to 32 internally
def test_from_float_forward_leading_dims(dtype, in_f):
    lin = masked_linear(in_f, 11, dtype=dtype)
    mod = Sparse24Linear.from_float(lin)
    w = mod.weight
    assert w.shape == (11, in_f) and w.dtype == dtype and is_24(w)
    # magnitude pruning keeps the 2 largest |w| of each 4
    kept = (w != 0) | (lin.weight == 0)
    assert int(kept.sum()) >= 11 * in_f // 2
    x = torch.randn(2, 3, in_f).to(dtype)
    want = F.linear(x.float(), w.float(), lin.bias.float()).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        for rows in (-1, 0):  # the measured rule, then always dense
            mod.max_sparse_rows = rows
            got = mod(x)
            assert got.shape == (2, 3, 11) and got.dtype == dtype
            torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def test_dense_fallback_above_the_threshold_gives_the_same_result():
    mod = Sparse24Linear.from_float(masked_linear(64, 40))
    x = torch.randn(9, 64)
    with torch.no_grad():
        mod.max_sparse_rows = None  # always the 2:4 kernel
        sparse = mod(x)
        mod.max_sparse_rows = 4  # 9 rows > 4: dense
        dense = mod(x)
        assert len(mod._prepared) == 1  # the dense copy, kept by the module
        assert torch.equal(mod(x), dense)
        # The public op applies the same rule (the cpu backend's), without a kept copy.
        mod.max_sparse_rows = -1  # the measured rule (fp32: dense from 65 rows with AVX-512)
        x70 = torch.randn(70, 64)
        assert torch.equal(s24.sparse24_matmul(x70, mod.values, mod.meta, mod.bias), mod(x70))
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    mod.to(torch.float64).to(torch.float32)  # a move drops the forms of the old weight
    assert len(mod._prepared) == 0


def test_dense_fallback_keeps_the_nan_contract():
    """A non-finite x keeps the 2:4 kernel: pruned weights are never multiplied."""
    mod = Sparse24Linear.from_float(masked_linear(64, 40))
    x = torch.randn(9, 64)
    x[3, 5] = float("inf")
    with torch.no_grad():
        mod.max_sparse_rows = 0
        got = mod(x)
        mod.max_sparse_rows = None
        assert torch.equal(got, mod(x))


@pytest.mark.parametrize("form", ["w8", "w8a8"])
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16])
def test_int8_forms(form, xdtype):
    lin = masked_linear(64, 24)
    mod = Sparse24Linear.from_float(lin, int8=form)
    assert mod.values.dtype == torch.int8 and mod.w_scale.shape == (24,)
    x = torch.randn(5, 64).to(xdtype)
    w = mod.weight  # dequantised, 2:4
    assert is_24(w)
    want = F.linear(x.float(), w, mod.bias).to(xdtype)
    tol = 3e-2 if form == "w8a8" or xdtype == torch.bfloat16 else 1e-4
    with torch.no_grad():
        for rows in (-1, 0):
            mod.max_sparse_rows = rows
            got = mod(x)
            assert got.dtype == xdtype
            torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16])
def test_w8_dense_path_with_many_rows_uses_the_gemm(monkeypatch, xdtype):
    """A GEMM rule (set here at 6 rows, also for fp32 on AMX, which has none) sends the dense
    path of a 2:4 w8 module to torch's GEMM as it does the dense weight-only op."""
    import llmkern.cpu.int8 as cpu_int8

    rules = cpu_int8.w8_gemm_rules()
    monkeypatch.setitem(rules, xdtype, (6, rules.get(xdtype, (0, xdtype))[1]))
    mod = Sparse24Linear.from_float(masked_linear(30, 24), int8="w8")  # K padded to 32
    x = torch.randn(7, 30).to(xdtype)
    want = F.linear(x.float(), mod.weight, mod.bias).to(xdtype)
    tol = 1e-5 if xdtype == torch.float32 else 2e-2
    with torch.no_grad():
        mod.max_sparse_rows = 0
        got = mod(x)
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    w_q = s24.decompress_24(mod.values, mod.meta)
    xp = F.pad(x, (0, 2))
    assert torch.equal(got, cpu_int8.w8_gemm(xp, w_q, mod.w_scale, 0, mod.bias))


def test_w8a8_dense_fallback_is_bit_exact():
    mod = Sparse24Linear.from_float(masked_linear(64, 24), int8="w8a8")
    x = torch.randn(7, 64)
    with torch.no_grad():
        mod.max_sparse_rows = None
        a = mod(x)
        mod.max_sparse_rows = 0
        b = mod(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("form", [None, "w8", "w8a8"])
def test_state_dict_round_trip_and_to_float(form):
    mod = Sparse24Linear.from_float(masked_linear(30, 9), int8=form)
    other = Sparse24Linear(30, 9, int8=form)
    other.load_state_dict(mod.state_dict())
    for k, v in mod.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    x = torch.randn(4, 30)
    with torch.no_grad():
        assert torch.equal(other(x), mod(x))
        lin = mod.to_float()
        assert isinstance(lin, nn.Linear) and torch.equal(lin.weight, mod.weight)
        torch.testing.assert_close(lin(x), mod(x), atol=3e-2 if form else 1e-5, rtol=3e-2)


def test_load_rejects_invalid_meta():
    mod = Sparse24Linear.from_float(masked_linear(32, 4))
    sd = mod.state_dict()
    sd["meta"] = torch.zeros_like(sd["meta"])  # idx0 == idx1
    with pytest.raises(ValueError, match="invalid 2:4 code"):
        Sparse24Linear(32, 4).load_state_dict(sd)


def test_from_weight_rejects_non_24_and_bad_arguments():
    with pytest.raises(ValueError, match="row 0, columns 0..3"):
        Sparse24Linear.from_weight(torch.ones(2, 8))
    with pytest.raises(ValueError, match="int8 must be None or one of"):
        Sparse24Linear(8, 2, int8="int4")
    mod = Sparse24Linear.from_float(masked_linear(32, 4))
    with pytest.raises(ValueError, match="in_features=32"):
        mod(torch.randn(3, 31))
    with pytest.raises(TypeError, match="layer's weight is torch.float32"):
        mod(torch.randn(3, 32).bfloat16())
    with pytest.raises(ValueError, match="importance must be one of"):
        Sparse24Linear.from_float(masked_linear(32, 4), "random")
    with pytest.raises(ValueError, match="needs act_norm"):
        Sparse24Linear.from_float(masked_linear(32, 4), "wanda")


def test_wanda_importance_changes_the_mask():
    lin = masked_linear(32, 8)
    norm = torch.ones(32)
    norm[::4] = 100.0  # column 0 of each group dominates
    mod = Sparse24Linear.from_float(lin, "wanda", act_norm=norm)
    assert bool((mod.weight[:, ::4] == lin.weight[:, ::4]).all())


@pytest.mark.parametrize("rows", [None, 0])  # sparse kernel path / dense path while training
def test_training_gradients_match_masked_dense_autograd(rows):
    lin = masked_linear(36, 10)
    mod = Sparse24Linear.from_float(lin)
    mod.max_sparse_rows = rows
    mask = (mod.weight != 0).float()
    x = torch.randn(2, 3, 36, requires_grad=True)
    g = torch.randn(2, 3, 10)
    mod(x).backward(g)

    w = mod.weight.clone().requires_grad_(True)
    b = mod.bias.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    F.linear(x2, w * mask, b).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mod.bias.grad, b.grad)
    dense_grad = s24.decompress_24_ref(mod.values.grad, mod.meta, 36)
    torch.testing.assert_close(dense_grad, w.grad, atol=1e-5, rtol=1e-5)


def test_optimizer_step_keeps_mask_and_updates_forward():
    mod = Sparse24Linear.from_float(masked_linear(32, 8))
    meta = mod.meta.clone()
    opt = torch.optim.SGD(mod.parameters(), lr=0.1)
    x = torch.randn(4, 32)
    with torch.no_grad():
        before = mod(x)
    mod(x).square().sum().backward()
    opt.step()
    assert torch.equal(mod.meta, meta)
    with torch.no_grad():
        mod.max_sparse_rows = 0  # dense cache must see the updated values
        after_dense = mod(x)
        mod.max_sparse_rows = None
        after = mod(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, after_dense, atol=1e-5, rtol=1e-5)


def test_reprune_recomputes_the_mask():
    lin = masked_linear(32, 8)
    mod = Sparse24Linear.from_float(lin)
    values = mod.values
    scores = torch.rand(8, 32)
    mod.reprune(scores, weight=lin.weight)
    assert mod.values is values
    assert torch.equal(mod.weight, s24.prune_24(lin.weight.detach(), scores))


def test_torch_compile_goes_through_the_op():
    mod = Sparse24Linear.from_float(masked_linear(32, 8))
    x = torch.randn(3, 32)
    with torch.no_grad():
        want = mod(x)
        got = torch.compile(mod, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(got, want)
