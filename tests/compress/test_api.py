"""The compression API on small plain-PyTorch models: module swapping, reports, SmoothQuant,
low-rank, pruning schedules, quantize/QAT and save/load (including damaged checkpoints)."""

import json
import os

import pytest
import torch
from torch import nn

import llmkern
from llmkern.compress import (
    LowRankLinear,
    convert,
    load,
    low_rank,
    prepare_qat,
    prune,
    quantize,
    save,
)
from llmkern.compress.calibration import collect_input_stats
from llmkern.compress.lowrank import rank_for_energy
from llmkern.compress.modules import as_linear, linear_layers
from llmkern.compress.smoothquant import smooth

transformers = pytest.importorskip("transformers")
Conv1D = transformers.pytorch_utils.Conv1D


class PreNormBlock(nn.Module):
    """x + fc2(gelu(fc1(ln(x)))): the LayerNorm feeds only fc1, so SmoothQuant may fold into it."""

    def __init__(self, d=24, h=40):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(x))))


class PostNormBlock(PreNormBlock):
    """ln(x + fc2(gelu(fc1(x)))), then fc3(ln output) added back: the LayerNorm output also feeds
    the residual, so folding a SmoothQuant scale into it would change the model."""

    def __init__(self, d=24, h=40):
        super().__init__(d, h)
        self.fc3 = nn.Linear(d, d)

    def forward(self, x):
        y = self.ln(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))
        return y + self.fc3(y)


class Tiny(nn.Module):
    def __init__(self, block=PreNormBlock, d=24):
        super().__init__()
        self.blocks = nn.Sequential(block(d), block(d))
        self.head = nn.Linear(d, 8)

    def forward(self, x):
        return self.head(self.blocks(x))


def _data(n=4, d=24, outliers=True):
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        x = torch.randn(3, 5, d, generator=g)
        if outliers:
            x[..., 3] *= 30.0  # an outlier channel, as in real activations
        batches.append(x)
    return batches


def test_linear_layers_skip_patterns():
    m = Tiny()
    names = [n for n, _ in linear_layers(m, skip=[])]
    assert names == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "head"]
    assert [n for n, _ in linear_layers(m, skip=["head", "*.fc2"])] == [
        "blocks.0.fc1",
        "blocks.1.fc1",
    ]
    assert [n for n, _ in linear_layers(m, skip=["blocks.1"])] == [
        "blocks.0.fc1",
        "blocks.0.fc2",
        "head",
    ]


def test_conv1d_as_linear_is_equivalent():
    conv = Conv1D(12, 7)  # nf=out=12, nx=in=7; weight [in, out]
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    x = torch.randn(2, 3, 7)
    lin = as_linear(conv)
    assert (lin.in_features, lin.out_features) == (7, 12)
    torch.testing.assert_close(lin(x), conv(x))


def test_report_counts_and_prints():
    m = Tiny()
    rep = low_rank(m, rank=2, skip=[])
    text = str(rep)
    assert "blocks.0.fc1" in text and "LowRankLinear" in text and "model:" in text
    row = rep.layers[0]
    assert row.params_before == 24 * 40 + 40
    assert row.params_after == 2 * (24 + 40) + 40
    assert row.bytes_after == 4 * row.params_after
    assert rep.model_bytes_after < rep.model_bytes_before


def test_low_rank_full_rank_is_exact_and_energy_picks_rank():
    lin = nn.Linear(16, 64)
    f = LowRankLinear.from_float(lin, 16)
    x = torch.randn(5, 16)
    torch.testing.assert_close(f(x), lin(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.to_float().weight, lin.weight, atol=1e-5, rtol=1e-5)
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])
    e = s.square() / s.square().sum()
    assert rank_for_energy(s, float(e[0])) == 1
    assert rank_for_energy(s, float(e[:2].sum()) + 1e-6) == 3
    assert rank_for_energy(s, 1.0) == 4


def test_low_rank_energy_keeps_dense_when_not_smaller():
    m = nn.Sequential(nn.Linear(8, 8))
    rep = low_rank(m, energy=1.0, skip=[])
    assert type(m[0]) is nn.Linear and "kept dense" in rep.layers[0].action
    with pytest.raises(ValueError, match="energy"):
        low_rank(Tiny(), energy=1.5)
    with pytest.raises(ValueError, match="rank"):
        low_rank(Tiny(), rank=0)


def test_low_rank_error_decreases_with_energy():
    torch.manual_seed(0)
    base = Tiny()
    x = torch.randn(4, 24)
    errs = []
    for energy in (0.5, 0.8, 0.95):
        m = Tiny()
        m.load_state_dict(base.state_dict())
        low_rank(m, energy=energy, skip=[])
        errs.append(float((m(x) - base(x)).norm().detach()))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothquant_keeps_prenorm_model_and_shrinks_outliers(alpha):
    m = Tiny(PreNormBlock)
    data = _data()
    ref = m(data[0])
    names = [n for n, _ in linear_layers(m, skip=[])]
    stats = collect_input_stats(m, names, data)
    before = stats["blocks.0.fc1"].absmax.clone()
    groups = smooth(m, stats, alpha, data[0])
    applied = {g.producer for g in groups if g.applied}
    assert {"blocks.0.ln", "blocks.1.ln"} <= applied
    torch.testing.assert_close(m(data[0]), ref, atol=1e-4, rtol=1e-4)
    after = collect_input_stats(m, ["blocks.0.fc1"], data)["blocks.0.fc1"].absmax
    # the outlier channel's range relative to the others shrinks
    assert float(after.max() / after.median()) < float(before.max() / before.median())


def test_smoothquant_reverts_groups_that_change_the_model():
    m = Tiny(PostNormBlock)
    data = _data()
    ref = m(data[0])
    names = [n for n, _ in linear_layers(m, skip=[])]
    groups = smooth(m, collect_input_stats(m, names, data), 0.5, data[0])
    post = [g for g in groups if g.producer == "blocks.0.ln"]
    assert post and not post[0].applied  # its output is also the residual: not foldable
    torch.testing.assert_close(m(data[0]), ref, atol=1e-5, rtol=1e-5)


def test_prune_schedule_calls_fine_tune_and_holds_masks():
    m = Tiny()
    seen = []

    def fine_tune(model, step):
        zeros = sum(
            int((model.get_submodule(n).weight == 0).sum())
            for n in ("blocks.0.fc1", "blocks.0.fc2")
        )
        seen.append(zeros)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x in _data(2, outliers=False):  # training moves every weight, the masks put zeros back
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()

    rep = prune(m, importance="magnitude", schedule=[0.5, 1.0], fine_tune=fine_tune, skip=["head"])
    total = 24 * 40 + 40 * 24
    assert seen[0] == pytest.approx(total / 4, abs=2) and seen[1] == total // 2
    assert all(
        type(m.get_submodule(n)).__name__ == "Sparse24Linear"
        for n in ("blocks.0.fc1", "blocks.1.fc2")
    )
    assert "2 steps" in rep.layers[0].action
    dense = m.blocks[0].fc1.to_float().weight
    assert bool(((dense.reshape(-1, 4) != 0).sum(1) <= 2).all())


def test_prune_arguments():
    with pytest.raises(ValueError, match="pattern"):
        prune(Tiny(), pattern="4:8")
    with pytest.raises(ValueError, match="importance"):
        prune(Tiny(), importance="random")
    with pytest.raises(ValueError, match="calibration"):
        prune(Tiny(), importance="wanda")
    with pytest.raises(ValueError, match="schedule"):
        prune(Tiny(), schedule=[0.5, 0.25])


def test_prune_wanda_uses_activations():
    torch.manual_seed(0)
    a, b = Tiny(), Tiny()
    b.load_state_dict(a.state_dict())
    data = _data()
    prune(a, importance="magnitude", skip=["head"])
    prune(b, importance="wanda", calibration=data, skip=["head"])
    wa, wb = a.blocks[0].fc1.to_float().weight, b.blocks[0].fc1.to_float().weight
    assert not torch.equal(wa != 0, wb != 0)
    # the outlier input channel (large ||x_j||) is kept far more often by Wanda than by magnitude
    kept_a, kept_b = float((wa[:, 3] != 0).float().mean()), float((wb[:, 3] != 0).float().mean())
    assert kept_b >= 0.85 and kept_b > kept_a + 0.2, (kept_a, kept_b)


def test_quantize_w8a8_w8_and_errors():
    torch.manual_seed(0)
    base = Tiny()
    x = _data(1, outliers=False)[0]
    for method, tol in (("w8a8", 0.05), ("w8", 0.02)):
        m = Tiny()
        m.load_state_dict(base.state_dict())
        rep = quantize(m, method)
        assert len(rep.layers) == 5 and rep.model_bytes_after < 0.5 * rep.model_bytes_before
        with torch.no_grad():
            err = (m(x) - base(x)).norm() / base(x).norm()
        assert float(err) < tol, (method, float(err))
    with pytest.raises(ValueError, match="method"):
        quantize(Tiny(), "w4")
    with pytest.raises(ValueError, match="calibration"):
        quantize(Tiny(), smoothquant=0.5)
    with pytest.raises(TypeError, match="calibration"):
        quantize(Tiny(), smoothquant=0.5, calibration=3)


def test_quantize_smoothquant_and_static_scales_stay_close():
    torch.manual_seed(0)
    base = Tiny()
    data = _data()
    ref = base(data[0])
    for kwargs in ({"smoothquant": 0.5}, {"activation_scale": "static"}):
        m = Tiny()
        m.load_state_dict(base.state_dict())
        rep = quantize(m, "w8a8", calibration=data, **kwargs)
        with torch.no_grad():
            err = float((m(data[0]) - ref).norm() / ref.norm())
        assert err < 0.1, (kwargs, err)
        if "smoothquant" in kwargs:
            assert rep.notes["smoothquant"]["smoothed"]


def test_prune_then_quantize_gives_sparse_int8():
    m = Tiny()
    prune(m, skip=["head"])
    rep = quantize(m, "w8a8", skip=["head"])
    assert any("2:4 values to int8" in r.action for r in rep.layers)
    assert m.blocks[0].fc1(torch.randn(2, 24)).shape == (2, 40)


def test_qat_prepare_train_convert():
    torch.manual_seed(0)
    m = Tiny()
    prepare_qat(m, skip=["head"])
    x = torch.randn(8, 24)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    m(x).square().mean().backward()
    opt.step()
    before = m(x)
    rep = convert(m)
    assert len(rep.layers) == 4
    assert type(m.blocks[0].fc1).__name__ == "Int8Linear"
    torch.testing.assert_close(m(x), before, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="prepare_qat"):
        convert(Tiny())


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------


def _compressed():
    torch.manual_seed(0)
    m = Tiny()
    quantize(m, "w8a8", skip=["blocks.1", "head"])
    prune(m, skip=["blocks.0", "head"])
    low_rank(m, rank=3, skip=["blocks"])
    return m


def test_save_load_round_trip_identical(tmp_path):
    m = _compressed()
    x = torch.randn(3, 24)
    save(m, str(tmp_path / "ck"))
    cfg = json.loads((tmp_path / "ck" / "llmkern.json").read_text())
    assert cfg["modules"]["blocks.0.fc1"]["class"] == "llmkern.nn.Int8Linear"
    assert cfg["modules"]["head"] == {
        "class": "llmkern.compress.LowRankLinear",
        "args": {"in_features": 24, "out_features": 8, "rank": 3, "bias": True},
    }
    skeleton = Tiny()
    got = load(str(tmp_path / "ck"), model=skeleton)
    assert got is skeleton
    assert torch.equal(got(x), m(x))


def test_load_plain_module_needs_a_skeleton(tmp_path):
    save(_compressed(), str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="pass model="):
        load(str(tmp_path / "ck"))


def _damage(path, how):
    f = os.path.join(path, "model.safetensors")
    data = bytearray(open(f, "rb").read())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF
    open(f, "wb").write(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_damaged_checkpoint_is_refused_and_loads_nothing(tmp_path, how):
    save(_compressed(), str(tmp_path / "ck"))
    _damage(str(tmp_path / "ck"), how)
    skeleton = Tiny()
    state = {k: v.clone() for k, v in skeleton.state_dict().items()}
    with pytest.raises(ValueError, match=how):
        load(str(tmp_path / "ck"), model=skeleton)
    assert not any(type(mod).__module__.startswith("llmkern") for mod in skeleton.modules())
    assert all(torch.equal(v, state[k]) for k, v in skeleton.state_dict().items())


def test_mismatched_checkpoint_is_refused_and_loads_nothing(tmp_path):
    save(_compressed(), str(tmp_path / "ck"))
    other = Tiny(d=32)  # same names, other shapes
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="does not match"):
        load(str(tmp_path / "ck"), model=other)
    assert type(other.blocks[0].fc1) is nn.Linear
    assert all(torch.equal(v, state[k]) for k, v in other.state_dict().items())
    with pytest.raises(ValueError, match="no module 'blocks.0.fc1'"):
        load(str(tmp_path / "ck"), model=nn.Sequential(nn.Linear(24, 24)))


def test_bad_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(str(tmp_path / "missing"))
    save(_compressed(), str(tmp_path / "ck"))
    cfg = tmp_path / "ck" / "llmkern.json"
    text = cfg.read_text()
    cfg.write_text(text[:-20])
    with pytest.raises(ValueError, match="not valid JSON"):
        load(str(tmp_path / "ck"), model=Tiny())
    bad = json.loads(text)
    bad["modules"]["blocks.0.fc1"]["class"] = "os.system"
    cfg.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="refusing"):
        load(str(tmp_path / "ck"), model=Tiny())


def test_public_api_is_reexported():
    assert llmkern.quantize is quantize and llmkern.save is save and llmkern.distill is not None


def test_save_load_static_activation_scales(tmp_path):
    m = Tiny()
    quantize(m, "w8a8", calibration=_data(), activation_scale="static")
    save(m, str(tmp_path / "ck"))
    x = _data(1)[0]
    with torch.no_grad():
        assert torch.equal(load(str(tmp_path / "ck"), model=Tiny())(x), m(x))
