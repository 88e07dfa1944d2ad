"""Options of the compression API apply or raise (a ValueError naming the option, before anything
changes), and checkpoints round-trip every setting of every llmkern module: constructor arguments
and settings made after construction (Sparse24Linear.max_sparse_rows), dtypes included."""

import json

import pytest
import torch
from torch import nn

import llmkern
from llmkern.compress import LowRankLinear
from llmkern.compress.structure import Recovery
from llmkern.nn import (
    FusedLinearKDLoss,
    Int8Linear,
    Int8LinearQAT,
    Int8WeightOnlyLinear,
    KDLoss,
    Sparse24Linear,
)


def _linear(k, n, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.bias.uniform_(-1, 1) if bias else None
    return lin.to(dtype)


def _sparse(int8, dtype, rows, k=10):
    m = Sparse24Linear.from_float(_linear(k, 6, dtype=dtype), int8=int8)
    m.max_sparse_rows = rows
    return m


def _lowrank():
    m = LowRankLinear.from_float(_linear(12, 10, dtype=torch.bfloat16), rank=3)
    return m


# Every llmkern module type with settings other than its defaults. Each entry: the module, a
# skeleton of what it replaces in a model (for load(model=...)), and inputs.
def _cases():
    x = lambda k, dt=torch.float32: (torch.randn(7, k).to(dt),)  # noqa: E731
    s, t = torch.randn(5, 11), torch.randn(5, 13)
    labels = torch.tensor([1, -1, 3, 0, 2])
    h_s, h_t = torch.randn(5, 4), torch.randn(5, 6)
    w_s, w_t = torch.randn(11, 4), torch.randn(13, 6)
    kd = dict(temperature=3.0, alpha=0.2, ignore_index=-1, reduction="sum", divergence="jsd",
              beta=0.3, backend="reference")  # fmt: skip
    return {
        "int8_static": (
            Int8Linear.from_float(_linear(12, 8), input_scale=0.03),
            nn.Linear(12, 8),
            x(12),
        ),  # fmt: skip
        "int8_nobias": (
            Int8Linear.from_float(_linear(12, 8, bias=False)),
            nn.Linear(12, 8, bias=False),
            x(12),
        ),  # fmt: skip
        "w8_groups": (
            Int8WeightOnlyLinear.from_float(_linear(12, 8, bias=False), group_size=4),
            nn.Linear(12, 8, bias=False),
            x(12, torch.bfloat16),
        ),  # fmt: skip
        "qat_bf16": (
            Int8LinearQAT.from_float(_linear(12, 8, bias=False, dtype=torch.bfloat16)),
            nn.Linear(12, 8, bias=False),
            x(12, torch.bfloat16),
        ),  # fmt: skip
        "sparse_bf16": (
            _sparse(None, torch.bfloat16, None),
            nn.Linear(10, 6),
            x(10, torch.bfloat16),
        ),  # fmt: skip
        "sparse_w8": (_sparse("w8", torch.float32, 0), nn.Linear(10, 6), x(10, torch.float16)),
        "sparse_w8a8": (_sparse("w8a8", torch.float32, 2), nn.Linear(10, 6), x(10)),
        "lowrank_bf16": (_lowrank(), nn.Linear(12, 10), x(12, torch.bfloat16)),
        "kd": (KDLoss(**kd), KDLoss(), (s, t, labels)),
        "fused_kd": (
            FusedLinearKDLoss(**kd, chunk_size=2),
            FusedLinearKDLoss(),
            (h_s, w_s, h_t, w_t, labels),
        ),  # fmt: skip
    }


def _settings(m):
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}


def _same_module(got, want, inputs):
    assert type(got) is type(want)
    assert _settings(got) == _settings(want)
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for (n1, m1), (n2, m2) in zip(got.named_modules(), want.named_modules(), strict=True):
        assert n1 == n2 and type(m1) is type(m2) and _settings(m1) == _settings(m2), n1
    with torch.no_grad():
        assert torch.equal(got(*inputs), want(*inputs))


@pytest.mark.parametrize("case", sorted(_cases()))
def test_every_module_round_trips_with_its_settings(tmp_path, case):
    m, skeleton, inputs = _cases()[case]
    m.eval()
    # The module alone: load rebuilds it from the checkpoint.
    llmkern.save(m, str(tmp_path / "alone"))
    _same_module(llmkern.load(str(tmp_path / "alone")), m, inputs)
    # Inside a model: load swaps it into an uncompressed skeleton.
    llmkern.save(nn.Sequential(m), str(tmp_path / "model"))
    got = llmkern.load(str(tmp_path / "model"), model=nn.Sequential(skeleton))
    _same_module(got[0], m, inputs)
    # state_dict: a module built with the same arguments and settings loads it exactly.
    if case.startswith("sparse"):
        fresh = Sparse24Linear(
            10, 6, int8=m.int8, dtype=m.values.dtype if not m.int8 else torch.float32
        )
        fresh.max_sparse_rows = m.max_sparse_rows
        fresh.load_state_dict(m.state_dict())
        _same_module(fresh.eval(), m, inputs)


def test_settings_change_the_behaviour_they_claim():
    """max_sparse_rows picks the kernel: the saved value must come back, not the default."""
    m = _sparse("w8a8", torch.float32, None)  # always the 2:4 kernel
    fresh = Sparse24Linear(10, 6, int8="w8a8")
    fresh.load_state_dict(m.state_dict())
    assert fresh.runs_dense(16, torch.float32) != m.runs_dense(16, torch.float32)


def test_low_rank_then_quantize_round_trips(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

    m = net()
    llmkern.low_rank(m, rank=4, skip=[])
    llmkern.quantize(m, "w8", skip=[])
    llmkern.save(m, str(tmp_path / "ck"))
    got = llmkern.load(str(tmp_path / "ck"), model=net())
    assert type(got[0].down) is Int8WeightOnlyLinear
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(got(x), m(x))


def test_unsavable_setting_raises_at_save(tmp_path):
    m = _sparse(None, torch.float32, 8)
    m.on_call = lambda: None
    with pytest.raises(ValueError, match="'on_call'"):
        llmkern.save(nn.Sequential(m), str(tmp_path / "ck"))
    assert not (tmp_path / "ck").exists()


def test_checkpoint_cannot_set_foreign_attributes(tmp_path):
    llmkern.save(nn.Sequential(_sparse(None, torch.float32, 8)), str(tmp_path / "ck"))
    cfg_path = tmp_path / "ck" / "llmkern.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["modules"]["0"]["attrs"]["forward"] = 1
    cfg_path.write_text(json.dumps(cfg))
    skeleton = nn.Sequential(nn.Linear(10, 6))
    with pytest.raises(ValueError, match="'forward'"):
        llmkern.load(str(tmp_path / "ck"), model=skeleton)
    assert type(skeleton[0]) is nn.Linear


def test_version_1_checkpoint_still_loads(tmp_path):
    m = nn.Sequential(_sparse("w8", torch.float32, -1))
    llmkern.save(m, str(tmp_path / "ck"))
    cfg_path = tmp_path / "ck" / "llmkern.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["version"] == 2
    cfg["version"] = 1
    for spec in cfg["modules"].values():
        spec.pop("attrs", None)
    cfg_path.write_text(json.dumps(cfg))
    got = llmkern.load(str(tmp_path / "ck"), model=nn.Sequential(nn.Linear(10, 6)))
    x = torch.randn(3, 10)
    with torch.no_grad():
        assert torch.equal(got(x), m(x))


def test_load_of_a_single_module_takes_no_model(tmp_path):
    llmkern.save(_sparse(None, torch.float32, 8), str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="without model="):
        llmkern.load(str(tmp_path / "ck"), model=nn.Linear(10, 6))


# ---------------------------------------------------------------------------------------------
# Options that do not apply raise, naming the option, and change nothing
# ---------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.norm(x))))


def _data(n=2):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 16, generator=g) for _ in range(n)]


def _state(model):
    return {k: (type(model.get_submodule(k.rpartition(".")[0])), v.clone())
            for k, v in model.state_dict().items()}  # fmt: skip


def _unchanged(model, snap):
    now = _state(model)
    return now.keys() == snap.keys() and all(
        now[k][0] is snap[k][0] and torch.equal(now[k][1], snap[k][1]) for k in now
    )


def _pruned():
    m = Net()
    llmkern.prune(m, skip=[])
    return m


@pytest.mark.parametrize(
    "make, kwargs, option",
    [
        (Net, dict(method="w8a8", group_size=4), "group_size"),
        (Net, dict(method="w8", calibration=_data()), "calibration"),
        (Net, dict(method="w8a8", max_batches=1), "max_batches"),
        (_pruned, dict(method="w8", group_size=4, skip=[]), "group_size"),
        (
            _pruned,
            dict(method="w8a8", calibration=_data(), smoothquant=0.5, skip=[]),
            "smoothquant",
        ),  # fmt: skip
        (
            _pruned,
            dict(method="w8a8", calibration=_data(), activation_scale="static", skip=[]),
            "activation_scale",
        ),  # fmt: skip
    ],
)
def test_quantize_options_that_do_not_apply(make, kwargs, option):
    m = make()
    snap = _state(m)
    with pytest.raises(ValueError, match=option):
        llmkern.quantize(m, **kwargs)
    assert _unchanged(m, snap)


def test_quantize_skip_applies_to_sparse_layers():
    m = _pruned()
    llmkern.quantize(m, "w8", skip=["fc2"])
    assert m.fc1.int8 == "w8" and m.fc2.int8 is None
    m = _pruned()
    with pytest.raises(ValueError, match="already"):  # every sparse layer skipped: nothing to do
        llmkern.quantize(m, "w8", group_size=4, skip=["fc1", "fc2"])


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(calibration=_data()), "calibration"),
        (dict(importance="l1", max_batches=1), "max_batches"),
    ],
)
def test_prune_options_that_do_not_apply(kwargs, option):
    m = Net()
    snap = _state(m)
    with pytest.raises(ValueError, match=option):
        llmkern.prune(m, skip=[], **kwargs)
    assert _unchanged(m, snap)


class TinyLM(nn.Module):
    def __init__(self, seed=0, v=12):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(v, 8)
        self.out = nn.Linear(8, v)

    def forward(self, input_ids):
        return self.out(self.emb(input_ids))


def _mse(student, teacher, batch):
    return student(**batch).float().pow(2).mean()


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(loss_fn=_mse, temperature=4.0), "temperature"),
        (dict(loss_fn=_mse, alpha=0.9), "alpha"),
        (dict(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), lr=0.5), "lr"),
        (dict(eval_every=1), "eval_every"),
        (dict(checkpoint_every=1), "checkpoint_fn"),
        (dict(checkpoint_fn=lambda m, s: None), "checkpoint_every"),
        (dict(steps=None, lr_decay=True), "lr_decay"),
        (dict(eval_every=-1, eval_fn=len), "eval_every"),
    ],
)
def test_distill_options_that_do_not_apply(kwargs, option):
    data = [{"input_ids": torch.randint(0, 12, (2, 4), generator=torch.Generator().manual_seed(i))}
            for i in range(2)]  # fmt: skip
    teacher, student = TinyLM(0), TinyLM(1)
    snap = _state(student)
    with pytest.raises(ValueError, match=option):
        llmkern.distill(teacher, student, data, **{"steps": 2, "progress": False, **kwargs})
    assert _unchanged(student, snap)


def _bert():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=24)  # fmt: skip
    return transformers.BertModel(cfg).eval()


def _ids():
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(importance="l1", calibration="data"), "calibration"),
        (dict(importance="l1", seed=3), "seed"),
        (dict(importance="random", gqa="heads"), "gqa"),
        (
            dict(importance="l1", recovery=Recovery("data", steps=1, loss_fn=len, alpha=0.1)),
            "recovery.alpha",
        ),  # fmt: skip
    ],
)
def test_prune_structure_options_that_do_not_apply(kwargs, option):
    m = _bert()
    data = _ids()
    kwargs = {k: data if v == "data" else v for k, v in kwargs.items()}
    if "recovery" in kwargs:
        kwargs["recovery"].data = data
    snap = _state(m)
    with pytest.raises(ValueError, match=option):
        llmkern.prune_structure(m, ffn=0.5, **kwargs)
    assert _unchanged(m, snap)


def test_low_rank_energy_with_rank_raises():
    m = Net()
    snap = _state(m)
    with pytest.raises(ValueError, match="energy"):
        llmkern.low_rank(m, rank=2, energy=0.5, skip=[])
    assert _unchanged(m, snap)
    llmkern.low_rank(m, rank=2, skip=[])  # the default energy with a rank is fine


def test_importance_inputs_for_another_method_raise():
    from llmkern.importance import importance_scores

    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="act_norm"):
        importance_scores(w, "magnitude", act_norm=torch.ones(8))
    with pytest.raises(ValueError, match="grad"):
        importance_scores(w, "wanda", act_norm=torch.ones(8), grad=torch.ones(4, 8))
    with pytest.raises(ValueError, match="act_norm"):
        Sparse24Linear.from_float(nn.Linear(8, 4), torch.rand(4, 8), act_norm=torch.ones(8))
