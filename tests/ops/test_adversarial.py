"""The sixteen defects of issue 15 (adversarial use of the public API), one test each, named
``test_rowNN_...``: each failed before its fix. The contracts they hold are listed in README.md
("Contracts under misuse") and docs/numerics.md (special values of the KD losses).

The hypothesis-driven misuse suite over every public function and module is in
tests/ops/test_misuse.py; the failure-injection tests of the transactional compression API are at
the end of this file."""

import copy
import itertools
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llmkern
import llmkern.nn as lnn
from llmkern import backends
from llmkern.compress import distill, load, low_rank, prepare_qat, prune, quantize, save
from llmkern.compress.distill import choose_loss
from llmkern.ops import kd as kd_ops
from tests.models import TinyLM

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def snapshot(model: nn.Module):
    """Everything a failed call must leave as it was: module types and every tensor's values."""
    return (
        [(n, type(m)) for n, m in model.named_modules()],
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [(n, p.requires_grad, None if p.grad is None else p.grad.clone())
         for n, p in model.named_parameters()],
    )  # fmt: skip


def assert_unchanged(model: nn.Module, snap) -> None:
    types, state, params = snapshot(model)
    assert types == snap[0]
    assert state.keys() == snap[1].keys()
    for k, v in state.items():
        assert v.dtype == snap[1][k].dtype and torch.equal(v, snap[1][k]), k
    for (n, rg, g), (n0, rg0, g0) in zip(params, snap[2], strict=True):
        assert (n, rg) == (n0, rg0)
        assert (g is None) == (g0 is None) and (g is None or torch.equal(g, g0)), n


def gpt2(seed=0):
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def ids_batches(n=3, vocab=128, t=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (2, t), generator=g)} for _ in range(n)]


class Mlp(nn.Module):
    def __init__(self, d=16, h=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(x + self.fc2(F.gelu(self.fc1(self.ln(x)))))


def mlp_batches(n=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 5, d, generator=g) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Row 1: int8 inference modules are differentiable in x (straight-through), never detached
# ---------------------------------------------------------------------------------------------


def compressed_modules():
    """The compressed forms of one random nn.Linear(16, 12), by name."""
    lin = nn.Linear(16, 12)
    return {
        "Int8Linear": lnn.Int8Linear.from_float(lin),
        "Int8Linear-static": lnn.Int8Linear.from_float(lin, input_scale=0.02),
        "Int8WeightOnlyLinear": lnn.Int8WeightOnlyLinear.from_float(lin),
        "Int8WeightOnlyLinear-g4": lnn.Int8WeightOnlyLinear.from_float(lin, group_size=4),
        "Int8WeightOnlyLinear-g8": lnn.Int8WeightOnlyLinear.from_float(lin, group_size=8),
        "Int8LinearQAT": lnn.Int8LinearQAT.from_float(lin),
        "Sparse24Linear": lnn.Sparse24Linear.from_float(lin),
        "Sparse24Linear-w8": lnn.Sparse24Linear.from_float(lin, int8="w8"),
        "Sparse24Linear-w8a8": lnn.Sparse24Linear.from_float(lin, int8="w8a8"),
        "LowRankLinear": llmkern.compress.LowRankLinear.from_float(lin, 3),
    }


# Row 1: the int8 inference forms; rows 8 and 13: one of each module class.
INT8_MODULES = ("Int8Linear", "Int8Linear-static", "Int8WeightOnlyLinear",
                "Int8WeightOnlyLinear-g8", "Sparse24Linear-w8", "Sparse24Linear-w8a8")  # fmt: skip
ALL_MODULES = ("Int8Linear", "Int8WeightOnlyLinear-g4", "Int8LinearQAT", "Sparse24Linear",
               "Sparse24Linear-w8a8", "LowRankLinear")  # fmt: skip


def dequantised(m) -> torch.Tensor:
    return (m.dense_weight() if isinstance(m, lnn.Sparse24Linear) else m.weight).double()


@pytest.mark.parametrize("backend", [None, "reference"])
@pytest.mark.parametrize("name", INT8_MODULES)
def test_row01_int8_modules_pass_gradients_to_their_input(name, backend, monkeypatch):
    if backend:
        monkeypatch.setenv("LLMKERN_BACKEND", backend)  # the op path instead of the direct one
    m = compressed_modules()[name]
    x = torch.randn(2, 3, 16, requires_grad=True)
    g = torch.randn(2, 3, 12)
    y = m(x)
    assert y.requires_grad
    y.backward(g)
    want = (g.double().reshape(-1, 12) @ dequantised(m)).reshape(2, 3, 16)
    torch.testing.assert_close(x.grad.double(), want, rtol=1e-5, atol=1e-6)
    # the int8 weight and scales are frozen
    assert all(not b.requires_grad for b in m.buffers())


def test_row01_the_issue_reproducer_residual_block():
    m = lnn.Int8Linear.from_float(nn.Linear(16, 16))
    x = torch.randn(4, 16, requires_grad=True)
    (x + m(x)).sum().backward()  # was: x.grad all ones (the layer's path cut)
    want = 1.0 + m.weight.double().sum(0).expand(4, 16)
    torch.testing.assert_close(x.grad.double(), want, rtol=1e-5, atol=1e-6)


def test_row01_sparse_int8_bias_gets_its_gradient_and_no_grad_builds_no_graph():
    m = lnn.Sparse24Linear.from_float(nn.Linear(16, 12), int8="w8a8")
    x = torch.randn(5, 16)  # only the bias (a Parameter) asks for a gradient
    g = torch.randn(5, 12)
    m(x).backward(g)
    torch.testing.assert_close(m.bias.grad, g.sum(0))
    with torch.no_grad():
        assert not m(x.requires_grad_()).requires_grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row01_gradient_has_the_input_dtype(dtype):
    m = lnn.Int8WeightOnlyLinear.from_float(nn.Linear(16, 8))
    x = torch.randn(3, 16, dtype=dtype, requires_grad=True)
    m(x).float().sum().backward()
    assert x.grad.dtype == dtype
    want = m.weight.sum(0).expand(3, 16).to(dtype)
    torch.testing.assert_close(x.grad, want, rtol=2e-2, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Row 2: load(path, model=...) checks every swapped layer against the given model
# ---------------------------------------------------------------------------------------------


def test_row02_load_refuses_a_model_whose_layer_shapes_differ(tmp_path):
    src = nn.Sequential(nn.Linear(8, 4))
    quantize(src, "w8a8", skip=[])
    save(src, str(tmp_path / "ck"))
    for other in (nn.Sequential(nn.Linear(8, 6)), nn.Sequential(nn.Linear(8, 4, bias=False)),
                  nn.Sequential(nn.Linear(6, 4))):  # fmt: skip
        snap = snapshot(other)
        with pytest.raises(ValueError, match=r"does not match the model at '0'"):
            load(str(tmp_path / "ck"), model=other)
        assert_unchanged(other, snap)
    same = nn.Sequential(nn.Linear(8, 4))
    x = torch.randn(3, 8)
    torch.testing.assert_close(load(str(tmp_path / "ck"), model=same)(x), src(x), rtol=0, atol=0)


def test_row02_load_refuses_llama_with_another_intermediate_size(tmp_path):
    def llama(inter):
        cfg = transformers.LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=inter, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(cfg).eval()

    src = llama(64)
    quantize(src, "w8a8")
    save(src, str(tmp_path / "ck"))
    other = llama(128)
    snap = snapshot(other)
    with pytest.raises(ValueError, match="does not match the model at 'model.layers.0.mlp"):
        load(str(tmp_path / "ck"), model=other)
    assert_unchanged(other, snap)


# ---------------------------------------------------------------------------------------------
# Row 3: distill's fused-linear KD only where the logits are head(hidden)
# ---------------------------------------------------------------------------------------------


def gemma2(seed, softcap=5.0):
    cfg = transformers.Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=32,
        final_logit_softcapping=softcap,
    )  # fmt: skip
    torch.manual_seed(seed)
    m = transformers.Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        m.lm_head.weight.mul_(20.0)  # logits of a few units: the softcap matters
    return m


def test_row03_softcapped_models_get_kd_on_their_real_logits():
    teacher, student = gemma2(0).eval(), gemma2(1)
    data = ids_batches(2, vocab=64)
    assert choose_loss(teacher, student) == "kd"
    assert choose_loss(teacher, student, data[0]) == "kd"
    rep = distill(teacher, student, data, steps=1, lr=0.0, progress=False)
    assert rep.loss == "kd"
    with torch.no_grad():
        s = student.eval()(**data[0]).logits[:, :-1]
        t = teacher(**data[0]).logits[:, :-1]
    want = lnn.KDLoss(2.0, 0.5)(s, t, data[0]["input_ids"][:, 1:])
    assert rep.losses[0] == pytest.approx(float(want), rel=1e-4)
    # without the softcap the same models take the fused path
    assert choose_loss(gemma2(0, None).eval(), gemma2(1, None), data[0]) == "fused_linear_kd"


def test_row03_unknown_logit_postprocessing_is_found_on_the_first_batch():
    class Scaled(transformers.GPT2LMHeadModel):
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            out.logits = out.logits * 3.0
            return out

    cfg = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    teacher, student = Scaled(cfg).eval(), gpt2()
    batch = ids_batches(1)[0]
    assert choose_loss(gpt2(1), student, batch) == "fused_linear_kd"
    assert choose_loss(teacher, student, batch) == "kd"


# ---------------------------------------------------------------------------------------------
# Row 4: the KD modules check the teacher's leading dimensions
# ---------------------------------------------------------------------------------------------


def test_row04_kd_modules_refuse_teachers_of_other_leading_shape():
    with pytest.raises(ValueError, match=r"teacher_logits must have shape \[2, 3, \.\.\.\]"):
        lnn.KDLoss()(torch.randn(2, 3, 10), torch.randn(3, 2, 10))
    with pytest.raises(ValueError, match=r"teacher_hidden must have shape \[2, 3, \.\.\.\]"):
        lnn.FusedLinearKDLoss()(
            torch.randn(2, 3, 4), torch.randn(10, 4), torch.randn(6, 5), torch.randn(10, 5)
        )
    s, t = torch.randn(2, 3, 10), torch.randn(2, 3, 10)  # same shapes: still the flat loss
    torch.testing.assert_close(lnn.KDLoss()(s, t), llmkern.kd_loss(s.view(6, 10), t.view(6, 10)))


# ---------------------------------------------------------------------------------------------
# Row 5: dtype casts keep the scales and bias of 2:4 + int8 layers float32
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["w8", "w8a8"])
@pytest.mark.parametrize("cast", ["half", "bfloat16", "double", "to-float16"])
def test_row05_dtype_casts_keep_int8_scales_and_bias_float32(form, cast, monkeypatch):
    m = lnn.Sparse24Linear.from_float(nn.Linear(16, 8), int8=form)
    x = torch.randn(3, 16)
    want = m(x)
    m = m.to(torch.float16) if cast == "to-float16" else getattr(m, cast)()
    assert m.w_scale.dtype == torch.float32 and m.bias.dtype == torch.float32
    assert isinstance(m.bias, nn.Parameter) and m.values.dtype == torch.int8
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)
    monkeypatch.setenv("LLMKERN_BACKEND", "cpu")  # the op path checks w_scale's dtype
    torch.testing.assert_close(m(x), want, rtol=1e-6, atol=1e-6)
    for im in (lnn.Int8Linear.from_float(nn.Linear(16, 8)),):  # the rule both follow
        assert getattr(im, cast if cast != "to-float16" else "half")().weight_scale.dtype == (
            torch.float32
        )


def test_row05_float_sparse_layers_still_cast():
    m = lnn.Sparse24Linear.from_float(nn.Linear(16, 8)).half()
    assert m.values.dtype == torch.float16 and m.bias.dtype == torch.float16


# ---------------------------------------------------------------------------------------------
# Row 6 and 7: KD losses on strided labels and on special values, every backend alike
# ---------------------------------------------------------------------------------------------


def kd_backends():
    names = ["reference"]
    if "cpu" in backends.kernels("kd_loss_rows") and llmkern._ext.available():
        names.append("cpu")
    if "triton" in backends.kernels("kd_loss_rows") and backends.triton_version():
        names.append("triton")
    return names


@pytest.mark.parametrize("backend", kd_backends())
def test_row06_strided_and_expanded_labels(backend, cpu_isa):
    s, t = torch.randn(3, 7), torch.randn(3, 7)
    lab = torch.randint(0, 7, (3, 2))
    column = lab[:, 0]
    assert not column.is_contiguous()
    expanded = torch.tensor(4).expand(3)
    for labels in (column, expanded):
        dense = labels.contiguous()
        want = kd_ops.kd_loss_rows_ref(s, t, dense, 2.0, 0.5, -100, "kl", 0.5, False)[0]
        got = llmkern.kd_loss(s, t, labels, 2.0, reduction="none", backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        got = lnn.KDLoss(2.0, reduction="none", backend=backend)(s, t, labels)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        h, w = torch.randn(3, 5), torch.randn(7, 5)
        ref = kd_ops.fused_linear_kd_loss_ref(h, w, h, w, dense, 2.0)
        got = llmkern.fused_linear_kd_loss(h, w, h, w, labels, 2.0, backend=backend)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


SPECIAL_ROWS = {
    "+inf": lambda t: t.__setitem__((1, 2), math.inf),
    "nan": lambda t: t.__setitem__((1, 4), math.nan),
    "all -inf": lambda t: t.__setitem__(1, -math.inf),
}


@pytest.mark.parametrize("special", list(SPECIAL_ROWS))
@pytest.mark.parametrize("divergence", kd_ops.DIVERGENCES)
@pytest.mark.parametrize("backend", kd_backends())
def test_row07_undefined_teacher_rows_give_nan_on_every_backend(
    backend, divergence, special, cpu_isa
):
    s, t = torch.randn(3, 9), torch.randn(3, 9) * 3
    if divergence != "reverse_kl":  # KL(q || p) is rightly +inf where p = 0 < q
        t[2, 5] = -math.inf  # a -inf entry among finite ones is fine: probability 0
    SPECIAL_ROWS[special](t)
    y = torch.tensor([1, 3, 0])
    want_rows, want_grad = kd_ops.kd_loss_rows_ref(s, t, y, 2.0, 0.5, -100, divergence, 0.5, True)
    assert torch.isnan(want_rows[1]) and torch.isnan(want_grad[1]).all()
    assert torch.isfinite(want_rows[[0, 2]]).all()
    z = s.clone().requires_grad_(True)
    rows = llmkern.kd_loss(z, t, y, 2.0, 0.5, reduction="none", divergence=divergence,
                           backend=backend)  # fmt: skip
    rows.backward(torch.ones(3))
    assert torch.isnan(rows[1]) and torch.isnan(z.grad[1]).all()
    torch.testing.assert_close(rows[[0, 2]], want_rows[[0, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.grad[[0, 2]], want_grad[[0, 2]], rtol=1e-5, atol=1e-5)
    # alpha = 0: the KD term has no weight and the teacher is not read
    ce = llmkern.kd_loss(s, t, y, 2.0, 0.0, reduction="none", backend=backend)
    torch.testing.assert_close(ce, F.cross_entropy(s, y, reduction="none"), rtol=1e-5, atol=1e-6)
    # an ignored row is 0 whatever its teacher
    y_ign = torch.tensor([1, -100, 0])
    rows = llmkern.kd_loss(s, t, y_ign, 2.0, reduction="none", divergence=divergence,
                           backend=backend)  # fmt: skip
    assert rows[1] == 0


@pytest.mark.parametrize("backend", kd_backends())
def test_row07_topk_teacher_special_values(backend, cpu_isa):
    s = torch.randn(3, 9)
    lp, idx = torch.log_softmax(torch.randn(3, 9), 1).topk(4, dim=1)
    lp = lp.clone()
    lp[1, 0] = math.inf
    lp[2] = -math.inf
    want = kd_ops.kd_loss_topk_rows_ref(s, idx, lp, None, 2.0, 0.5, -100, False)[0]
    got = llmkern.kd_loss_topk(s, idx, lp, None, 2.0, reduction="none", backend=backend)
    assert torch.isnan(want[1:]).all() and torch.isnan(got[1:]).all()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Row 8: every module pickles, so torch.save(model) works
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODULES)
def test_row08_modules_pickle_and_torch_save(name, tmp_path):
    m = compressed_modules()[name]
    x = torch.randn(3, 16)
    back = pickle.loads(pickle.dumps(m))
    torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)
    model = nn.Sequential(m, nn.ReLU())
    torch.save(model, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_row08_pruned_model_saves_whole():
    m = Mlp()
    prune(m)
    back = pickle.loads(pickle.dumps(m))
    x = mlp_batches(1)[0]
    torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)
    back.fc1.load_state_dict(m.fc1.state_dict())  # the load hook survived the round trip
    bad = {k: v.clone() for k, v in m.fc1.state_dict().items()}
    bad["meta"][0, 0] = 0x55  # idx0 == idx1: not a valid code
    with pytest.raises(ValueError, match="invalid 2:4 code"):
        back.fc1.load_state_dict(bad)


# ---------------------------------------------------------------------------------------------
# Row 9 and 12: calibration is read once, single batches are refused, failures change nothing
# ---------------------------------------------------------------------------------------------


def test_row09_calibration_generator_is_read_once():
    data = ids_batches(3)
    a, b = gpt2(), gpt2()
    quantize(a, "w8a8", calibration=data, smoothquant=0.5)
    rep = quantize(b, "w8a8", calibration=(x for x in data), smoothquant=0.5)
    assert len(rep.layers) == 8
    x = data[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(b(x).logits, a(x).logits, rtol=0, atol=0)
    c = gpt2()
    prune(c, importance="wanda", calibration=iter(data), reconstruct=True)


def test_row09_failed_prune_leaves_the_model_as_it_was():
    m = gpt2()
    data = ids_batches(2) + [{"input_ids": torch.randint(0, 128, (2, 40))}]  # > n_positions
    snap = snapshot(m)
    with pytest.raises((IndexError, RuntimeError, ValueError)):
        prune(m, importance="wanda", calibration=data)
    assert_unchanged(m, snap)
    assert type(m.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


@pytest.mark.parametrize("how", ["dict", "tensor", "string", "none-yielding"])
def test_row12_single_batch_or_bad_calibration_is_refused_before_any_change(how):
    m = gpt2()
    batch = ids_batches(1)[0]
    calib = {"dict": batch, "tensor": batch["input_ids"], "string": "text",
             "none-yielding": iter([])}[how]  # fmt: skip
    snap = snapshot(m)
    exc, match = (ValueError, "no batch") if how == "none-yielding" else (TypeError, "batches")
    for call in (
        lambda: quantize(m, "w8a8", calibration=calib, smoothquant=0.5),
        lambda: quantize(m, "w8a8", calibration=calib, activation_scale="static"),
        lambda: prune(m, importance="wanda", calibration=calib),
        lambda: prune(m, importance="taylor", calibration=calib),
    ):
        with pytest.raises(exc, match=match):
            call()
        assert_unchanged(m, snap)
    if how == "dict":
        with pytest.raises(TypeError, match=r"one batch \(dict\).*\[batch\]"):
            quantize(m, "w8a8", calibration=calib, smoothquant=0.5)


# ---------------------------------------------------------------------------------------------
# Row 10, 11, 15: distill's data, options and models
# ---------------------------------------------------------------------------------------------


def test_row10_short_generator_stops_with_the_report():
    data = [{"input_ids": torch.randint(0, 20, (2, 5))} for _ in range(3)]
    with pytest.warns(UserWarning, match="data ran out after 3 steps"):
        rep = distill(TinyLM(0), TinyLM(1), (b for b in data), steps=5, progress=False)
    assert rep.steps == 3 and len(rep.losses) == 3 and "ran out" in rep.stopped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a list repeats: no warning, all steps
        assert distill(TinyLM(0), TinyLM(1), data, steps=5, progress=False).steps == 5
    with pytest.raises(ValueError, match="no batch"):
        distill(TinyLM(0), TinyLM(1), iter([]), steps=5, progress=False)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_row11_cli_distill_refuses_bad_temperature_at_once(value, capsys):
    from llmkern.apps import cli, miniature

    with pytest.raises(ValueError, match="--temperature"):
        miniature.Settings(temperature=float(value))
    assert cli.main(["distill", "--temperature", value, "--quick", "--no-progress"]) == 2
    assert "--temperature" in capsys.readouterr().err
    for bad in (dict(temperature=math.nan), dict(alpha=math.nan), dict(temperature=math.inf)):
        with pytest.raises(ValueError, match="temperature|alpha"):
            distill(TinyLM(0), TinyLM(1), [{"input_ids": torch.zeros(1, 3, dtype=torch.long)}],
                    **bad)  # fmt: skip


def test_row15_models_without_logits_need_a_loss_fn():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)  # fmt: skip
    teacher, student = transformers.BertModel(cfg).eval(), transformers.BertModel(cfg)
    data = [{"input_ids": torch.randint(0, 50, (2, 6))} for _ in range(2)]
    snap = snapshot(student)
    with pytest.raises(TypeError, match="has no logits.*loss_fn"):
        distill(teacher, student, data, steps=2, progress=False)
    assert_unchanged(student, snap)

    def hidden_mse(s, t, batch):
        with torch.no_grad():
            want = t(**batch).last_hidden_state
        return F.mse_loss(s(**batch).last_hidden_state, want)

    assert distill(teacher, student, data, steps=2, loss_fn=hidden_mse, progress=False).steps == 2


# ---------------------------------------------------------------------------------------------
# Row 13, 14: TorchScript and the meta device
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODULES + ("KDLoss", "FusedLinearKDLoss"))
def test_row13_torch_jit_script_says_it_is_not_supported(name):
    m = {"KDLoss": lnn.KDLoss(), "FusedLinearKDLoss": lnn.FusedLinearKDLoss()}.get(name)
    m = m if m is not None else compressed_modules()[name]
    for target in (m, nn.Sequential(nn.Identity(), m)):
        with pytest.raises(TypeError, match="torch.jit.script does not support llmkern"):
            torch.jit.script(target)


def test_row14_meta_device_from_float_builds_shapes():
    lin = nn.Linear(16, 8, device="meta")
    q, s = llmkern.quantize_weight(lin.weight)
    assert q.device.type == "meta" and q.shape == (8, 16) and s.shape == (8,)
    for m in (lnn.Int8Linear.from_float(lin), lnn.Int8WeightOnlyLinear.from_float(lin, 4),
              lnn.Int8LinearQAT.from_float(lin)):  # fmt: skip
        assert m.qweight.device.type == "meta" if hasattr(m, "qweight") else True
        out = m(torch.randn(3, 16, device="meta"))
        assert out.device.type == "meta" and out.shape == (3, 8)
    with pytest.raises(ValueError, match="meta"):
        lnn.Sparse24Linear.from_float(lin)


# ---------------------------------------------------------------------------------------------
# Row 16: compressing twice is an error, not an empty report
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second, match",
    [
        ("quantize", "quantize", "Int8Linear x3"),
        ("quantize", "prune", "Int8Linear x3.*Prune a float model, then quantize"),
        ("prune", "prune", "Sparse24Linear x3"),
        ("quantize-w8", "low_rank", "Int8WeightOnlyLinear x3"),
        ("quantize", "prepare_qat", "Int8Linear x3"),
    ],
)
def test_row16_double_application_raises(first, second, match):
    calls = {
        "quantize": lambda m: quantize(m, "w8a8", skip=[]),
        "quantize-w8": lambda m: quantize(m, "w8", skip=[]),
        "prune": lambda m: prune(m, skip=[]),
        "low_rank": lambda m: low_rank(m, rank=2, skip=[]),
        "prepare_qat": lambda m: prepare_qat(m, skip=[]),
    }
    m = Mlp()
    calls[first](m)
    snap = snapshot(m)
    with pytest.raises(ValueError, match=match):
        calls[second](m)
    assert_unchanged(m, snap)


def test_row16_quantize_after_prune_is_supported_and_int8_sparse_is_not_requantised():
    m = Mlp()
    prune(m, skip=[])
    rep = quantize(m, "w8", skip=[])
    assert [r.action for r in rep.layers] == ["2:4 values to int8 (w8)"] * 3
    with pytest.raises(ValueError, match=r"Sparse24Linear x3"):
        quantize(m, "w8a8", skip=[])
    with pytest.raises(ValueError, match="no linear layer"):
        quantize(nn.Sequential(nn.ReLU()), "w8a8")


# ---------------------------------------------------------------------------------------------
# Transactions: a failure injected mid-way leaves the model exactly as it was
# ---------------------------------------------------------------------------------------------


def fail_on_call(monkeypatch, owner, attr, n):
    """Make ``owner.attr`` raise on its n-th call (the earlier calls run for real)."""
    real = getattr(owner, attr)
    count = itertools.count(1)

    def wrapped(*a, **k):
        if next(count) == n:
            raise RuntimeError("injected failure")
        return real(*a, **k)

    monkeypatch.setattr(owner, attr, wrapped)


CALLS = {
    "quantize-w8a8": (lambda m, d: quantize(m, "w8a8"), (lnn.Int8Linear, "from_float")),
    "quantize-smoothquant": (
        lambda m, d: quantize(m, "w8a8", calibration=d, smoothquant=0.5),
        (lnn.Int8Linear, "from_float"),
    ),
    "quantize-static": (
        lambda m, d: quantize(m, "w8a8", calibration=d, activation_scale="static"),
        (lnn.Int8Linear, "from_float"),
    ),
    "quantize-w8": (lambda m, d: quantize(m, "w8"), (lnn.Int8WeightOnlyLinear, "from_float")),
    "prune": (lambda m, d: prune(m), (lnn.Sparse24Linear, "from_weight")),
    "prune-wanda-refit": (
        lambda m, d: prune(m, importance="wanda", calibration=d, reconstruct=True),
        (lnn.Sparse24Linear, "from_weight"),
    ),
    "prune-schedule": (
        lambda m, d: prune(m, schedule=[0.5, 1.0], fine_tune=lambda mm, s: None),
        (lnn.Sparse24Linear, "from_weight"),
    ),
    "low_rank": (lambda m, d: low_rank(m, rank=4), (llmkern.compress.LowRankLinear, "from_float")),
    "prepare_qat": (lambda m, d: prepare_qat(m), (lnn.Int8LinearQAT, "from_float")),
}


@pytest.mark.parametrize("fail_at", [1, 3])
@pytest.mark.parametrize("call", list(CALLS))
def test_failure_injected_midway_leaves_model_unchanged(call, fail_at, monkeypatch):
    fn, (owner, attr) = CALLS[call]
    m = gpt2()
    data = ids_batches(3)
    snap = snapshot(m)
    fail_on_call(monkeypatch, owner, attr, fail_at)
    with pytest.raises(RuntimeError, match="injected failure"):
        fn(m, data)
    assert_unchanged(m, snap)
    monkeypatch.undo()
    ok = copy.deepcopy(m)
    fn(ok, data)  # and the same call succeeds without the failure
    assert snapshot(ok)[0] != snap[0]


def test_failure_inside_fine_tune_restores_trained_parameters():
    m = gpt2()
    snap = snapshot(m)

    def fine_tune(model, step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # user training changes everything...
        if step == 1:
            raise RuntimeError("injected failure")  # ... then fails

    with pytest.raises(RuntimeError, match="injected failure"):
        prune(m, schedule=[0.5, 1.0], fine_tune=fine_tune)
    assert_unchanged(m, snap)


def test_failed_smoothquant_restores_the_producers_exactly(monkeypatch):
    m = Mlp()
    snap = snapshot(m)
    fail_on_call(monkeypatch, lnn.Int8Linear, "from_float", 2)
    with pytest.raises(RuntimeError):
        quantize(m, "w8a8", calibration=mlp_batches(), smoothquant=0.8)
    assert_unchanged(m, snap)  # ln.weight / fc1 were smoothed, then restored bit for bit
