"""prune_structure: removing FFN neurons, attention heads (GQA groups) and layers from BERT, GPT-2
and Llama models equals masking those units to zero; importance against hand-computed values;
config round trips, generate with the KV cache, stacking with quantize / 2:4, errors before any
change, recovery by distillation. Tiny random-weight models built from configs (no downloads)."""

import copy

import pytest
import torch
from torch import nn

import llmkern
from llmkern.compress.structure import Recovery, prune_structure

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

V, T = 97, 12
FAMILIES = ("bert", "gpt2", "llama")


def make(family: str, lm: bool = False, layers: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    if family == "bert":
        cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=layers,
                                      num_attention_heads=4, intermediate_size=48,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
        return transformers.BertModel(cfg).eval()
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=layers, n_head=4, n_inner=48,
                                      n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        return (transformers.GPT2LMHeadModel if lm else transformers.GPT2Model)(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=layers,
                                   num_attention_heads=8, num_key_value_heads=2, intermediate_size=48,
                                   max_position_embeddings=64)  # fmt: skip
    model = (transformers.LlamaForCausalLM if lm else transformers.LlamaModel)(cfg).eval()
    with torch.no_grad():  # random norms and biases, so that nothing is trivially 1 or 0
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


def batch(seed=1, b=2, t=T, labels=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if labels:
        out["labels"] = ids.clone()
    return out


def calib(n=2, labels=False):
    return [batch(seed=10 + i, labels=labels) for i in range(n)]


def hidden(model, b):
    with torch.no_grad():
        out = model(**b)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def backbone(model):
    return model.base_model


def blocks(model):
    base = backbone(model)
    return {"BertModel": lambda: base.encoder.layer, "GPT2Model": lambda: base.h,
            "LlamaModel": lambda: base.layers}[type(base).__name__]()  # fmt: skip


def down_and_o(layer):
    """(down projection as [out, in] weight holder, o projection) of one block."""
    if hasattr(layer, "intermediate"):
        return layer.output.dense, layer.attention.output.dense
    if hasattr(layer, "attn"):
        return layer.mlp.c_proj, layer.attn.c_proj
    return layer.mlp.down_proj, layer.self_attn.o_proj


def zero_inputs(m, keep: list[int], width: int, total: int):
    """Zero the input columns of ``m`` outside the kept units (``width`` columns per unit)."""
    drop = [u for u in range(total) if u not in keep]
    cols = [u * width + j for u in drop for j in range(width)]
    with torch.no_grad():
        if type(m).__name__ == "Conv1D":
            m.weight[cols, :] = 0
        else:
            m.weight[:, cols] = 0


def masked_reference(model, report, head_dim):
    """The original model with every removed neuron / head masked to zero and every removed
    layer skipped (a forward hook that returns the layer's input)."""
    ref = copy.deepcopy(model)
    units = report.notes["kept_units"]
    kept = report.notes["kept_layers"]
    for i, layer in enumerate(blocks(ref)):
        if i not in kept:

            def skip(_m, args, kwargs, out):
                x = args[0] if args else kwargs["hidden_states"]
                return (x, *out[1:]) if isinstance(out, tuple) else x

            layer.register_forward_hook(skip, with_kwargs=True)
            continue
        down, o = down_and_o(layer)
        u = units[i]
        n_ffn = down.weight.shape[0 if type(down).__name__ == "Conv1D" else 1]
        zero_inputs(down, u["ffn"], 1, n_ffn)
        n_heads = (o.weight.shape[0 if type(o).__name__ == "Conv1D" else 1]) // head_dim
        zero_inputs(o, u["heads"], head_dim, n_heads)
    return ref


CASES = [
    ("ffn", dict(ffn=0.5)),
    ("heads", dict(heads=0.5)),
    ("layers", dict(layers=1)),
    ("all", dict(ffn=0.25, heads=0.5, layers=1)),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind,kwargs", CASES, ids=[c[0] for c in CASES])
def test_pruning_equals_masking(family, kind, kwargs):
    model = make(family)
    head_dim = 32 // (4 if family != "llama" else 8)
    pruned = copy.deepcopy(model)
    report = prune_structure(pruned, importance="activation", calibration=calib(), **kwargs)
    ref = masked_reference(model, report, head_dim)
    b = batch(seed=3)
    want = hidden(ref, b)
    got = hidden(pruned, b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # ...and the model really shrank, with its config saying so
    assert report.model_params_after < report.model_params_before
    cfg = pruned.config
    assert cfg.num_hidden_layers == 3 - kwargs.get("layers", 0) == len(blocks(pruned))
    ffn_size = cfg.n_inner if family == "gpt2" else cfg.intermediate_size
    assert ffn_size == 48 - int(48 * kwargs.get("ffn", 0.0))


@pytest.mark.parametrize(
    "mode,heads,kv", [("groups", 0.5, 1), ("heads", 0.5, 2), ("heads", 0.75, 2)]
)
def test_gqa_groups_or_heads_per_group(mode, heads, kv):
    model = make("llama")
    pruned = copy.deepcopy(model)
    report = prune_structure(pruned, heads=heads, gqa=mode, calibration=calib())
    n_q = 8 - (4 if mode == "groups" else 2 * int(4 * heads))
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (n_q, kv)
    for u in report.notes["kept_units"].values():
        groups = {h // 4 for h in u["heads"]}
        assert sorted(groups) == u["kv_heads"]  # every kept query head reads a kept kv head
        assert all(sum(h // 4 == g for h in u["heads"]) == n_q // kv for g in groups)
    # a removed group also loses its k/v rows: masking its query heads' output is equivalent
    ref = masked_reference(model, report, 4)
    torch.testing.assert_close(hidden(pruned, batch()), hidden(ref, batch()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_exactly_the_identity(family):
    model = make(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = hidden(model, batch())
    report = prune_structure(model, ffn=0.0, heads=0.0, layers=0, calibration=calib(), iterations=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(before)
    assert torch.equal(hidden(model, batch()), out)
    assert report.model_params_after == report.model_params_before


# ---------------------------------------------------------------------------------------------
# Importance


def test_l1_and_activation_scores_hand_computed():
    from llmkern.compress import structure as st

    model = make("bert", layers=2)
    base, fam = st._backbone(model)
    _, _, blks, attns, ffns = st._model_parts(base, fam)
    w = st._unit_scores(model, blks, attns, ffns, "l1", None, (True, True, True), 0)
    layer = model.encoder.layer[1]
    up, down = layer.intermediate.dense.weight, layer.output.dense.weight
    torch.testing.assert_close(w["ffn"][1], up.abs().sum(1) + down.abs().sum(0))
    s = layer.attention.self
    per_head = lambda lin: lin.weight.abs().reshape(4, 8, 32).sum((1, 2))  # noqa: E731
    o = layer.attention.output.dense.weight.abs().reshape(32, 4, 8).sum((0, 2))
    torch.testing.assert_close(
        w["heads"][1], per_head(s.query) + per_head(s.key) + per_head(s.value) + o
    )

    data = calib(3)
    a = st._unit_scores(model, blks, attns, ffns, "activation", data, (True, True, True), 0)
    acts, outs, hs = [], [], []
    h1 = layer.intermediate.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    h2 = layer.attention.self.register_forward_hook(lambda m, i, o: outs.append(o[0].detach()))
    with torch.no_grad():
        for b in data:
            hs.append(model(**b, output_hidden_states=True).hidden_states)
    h1.remove()
    h2.remove()
    x = torch.cat([t.reshape(-1, 48) for t in acts])
    torch.testing.assert_close(a["ffn"][1], x.abs().mean(0))
    y = torch.cat([t.reshape(-1, 4, 8) for t in outs])
    torch.testing.assert_close(a["heads"][1], y.norm(dim=-1).mean(0))
    for i in range(2):  # Block Importance = 1 - mean cos(layer input, layer output)
        cos = torch.cat(
            [nn.functional.cosine_similarity(h[i], h[i + 1], dim=-1).flatten() for h in hs]
        )
        assert a["layers"][i] == pytest.approx(float(1 - cos.mean()), rel=1e-5, abs=1e-6)


def test_taylor_scores_hand_computed():
    from llmkern.compress import structure as st

    model = make("gpt2", lm=True, layers=1)
    data = calib(2, labels=True)
    base, fam = st._backbone(model)
    _, _, blks, attns, ffns = st._model_parts(base, fam)
    got = st._unit_scores(model, blks, attns, ffns, "taylor", data, (True, True, True), 0)
    ref = copy.deepcopy(model)
    fc, proj = ref.transformer.h[0].mlp.c_fc.weight, ref.transformer.h[0].mlp.c_proj.weight
    acc_fc, acc_proj = torch.zeros_like(fc), torch.zeros_like(proj)
    for b in data:
        ref.zero_grad()
        ref(**b).loss.backward()
        acc_fc += fc.grad.abs()
        acc_proj += proj.grad.abs()
    # Conv1D weights are [in, out]: neuron j is column j of c_fc and row j of c_proj
    want = (fc.detach() * acc_fc).abs().sum(0) + (proj.detach() * acc_proj).abs().sum(1)
    torch.testing.assert_close(got["ffn"][0], want, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # calibration leaves no gradient behind


def test_random_importance_is_seeded():
    a, b, c = make("gpt2"), make("gpt2"), make("gpt2")
    ra = prune_structure(a, ffn=0.5, heads=0.5, importance="random", seed=1)
    rb = prune_structure(b, ffn=0.5, heads=0.5, importance="random", seed=1)
    rc = prune_structure(c, ffn=0.5, heads=0.5, importance="random", seed=2)
    assert ra.notes["kept_units"] == rb.notes["kept_units"] != rc.notes["kept_units"]


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_keeps_planted_units_and_drops_dead_ones(family):
    model = make(family, layers=2)
    layer = blocks(model)[1]
    d = 8 if family != "llama" else 4
    with torch.no_grad():
        # FFN: neuron 5 dead (its up rows and biases zeroed: act(0) = 0), neuron 7 loud
        up = {"bert": lambda: layer.intermediate.dense, "gpt2": lambda: layer.mlp.c_fc,
              "llama": lambda: layer.mlp.up_proj}[family]()  # fmt: skip
        w = up.weight.T if family == "gpt2" else up.weight
        w[5] = 0
        w[7] *= 20
        if up.bias is not None:
            up.bias[5] = 0
        # heads: the value rows of head 1 zeroed (its output is 0), head 2's scaled up;
        # Llama: kv head 1 (query heads 4-7) zeroed, so its group goes
        v, off = {"bert": lambda: (layer.attention.self.value, 0),
                  "gpt2": lambda: (layer.attn.c_attn, 64),
                  "llama": lambda: (layer.self_attn.v_proj, 0)}[family]()  # fmt: skip
        vw = v.weight.T if family == "gpt2" else v.weight
        vw[off + d : off + 2 * d] = 0
        vw[off + 2 * d : off + 3 * d] *= 20
        if v.bias is not None:
            v.bias[off + d : off + 2 * d] = 0
    heads = 0.25 if family != "llama" else 0.5
    report = prune_structure(model, ffn=0.5, heads=heads, calibration=calib())
    u = report.notes["kept_units"][1]
    assert 7 in u["ffn"] and 5 not in u["ffn"]
    if family == "llama":
        assert u["kv_heads"] == [0] and u["heads"] == [0, 1, 2, 3]
    else:
        assert 2 in u["heads"] and 1 not in u["heads"]


def test_block_importance_removes_the_layer_that_changes_least():
    model = make("gpt2", layers=3)
    with torch.no_grad():  # layer 1 adds almost nothing to the residual stream
        model.h[1].attn.c_proj.weight.mul_(1e-4)
        model.h[1].attn.c_proj.bias.zero_()
        model.h[1].mlp.c_proj.weight.mul_(1e-4)
        model.h[1].mlp.c_proj.bias.zero_()
    report = prune_structure(model, layers=1, calibration=calib())
    assert report.notes["kept_layers"] == [0, 2]
    assert [b.attn.layer_idx for b in model.h] == [0, 1]


# ---------------------------------------------------------------------------------------------
# Round trips, generate, stacking


@pytest.mark.parametrize(
    "family,kwargs",
    [("llama", dict(ffn=0.5, heads=0.5, layers=1)), ("gpt2", dict(ffn=0.5, layers=1)),
     ("bert", dict(ffn=0.5, layers=1))],
)  # fmt: skip
def test_plain_transformers_round_trip(family, kwargs, tmp_path):
    model = make(family, lm=family != "bert")
    prune_structure(model, calibration=calib(), **kwargs)
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()  # plain transformers, no llmkern
    assert torch.equal(hidden(again, batch()), hidden(model, batch()))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_head_pruned_bert_gpt2_round_trip_through_llmkern(family, tmp_path):
    model = make(family)
    prune_structure(model, ffn=0.5, heads=0.5, layers=1, calibration=calib())
    assert model.config.llmkern_heads == {"num_attention_heads": 2, "head_dim": 8}
    llmkern.save(model, str(tmp_path / "ck"))
    again = llmkern.load(str(tmp_path / "ck"))
    assert torch.equal(hidden(again, batch()), hidden(model, batch()))
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(Exception, match="(?i)size|shape"):  # transformers cannot describe it
        type(model).from_pretrained(tmp_path / "hf")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_with_kv_cache(family, tmp_path):
    model = make(family, lm=True)
    prune_structure(model, ffn=0.5, heads=0.5, layers=1, calibration=calib())
    ids = batch(b=1, t=5)["input_ids"]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, use_cache=True, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    assert cached.shape == (1, 11) and torch.equal(cached, uncached)


def test_stacks_with_quantize_and_24_prune():
    model = make("llama", lm=True)
    prune_structure(model, ffn=0.5, heads=0.5, layers=1, calibration=calib())
    ref = hidden(model, batch())
    for apply in (lambda m: llmkern.quantize(m, "w8a8"), lambda m: llmkern.quantize(m, "w8"),
                  lambda m: llmkern.prune(m, "2:4", importance="wanda", calibration=calib())):  # fmt: skip
        m = copy.deepcopy(model)
        report = apply(m)
        assert len(report.layers) == 2 * 7  # every linear of the two kept layers
        out = hidden(m, batch())
        cos = nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
        assert cos > 0.9, report.method
    with pytest.raises(TypeError, match="before quantize"):
        q = copy.deepcopy(model)
        llmkern.quantize(q, "w8a8")
        prune_structure(q, ffn=0.5, calibration=calib())


# ---------------------------------------------------------------------------------------------
# Errors before any change


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)


def _bad(model, match, exc=ValueError, **kwargs):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = model.config.to_dict()
    with pytest.raises(exc, match=match):
        prune_structure(model, **kwargs)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert model.config.to_dict() == cfg


def test_unsupported_model_names_class_and_what_is_supported():
    with pytest.raises(TypeError, match="Tiny.*supported: BERT-style"):
        prune_structure(Tiny(), ffn=0.5, importance="l1")
    opt = transformers.OPTModel(transformers.OPTConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1,
                                                       ffn_dim=32, num_attention_heads=2,
                                                       word_embed_proj_dim=16))  # fmt: skip
    _bad(opt, "OPTModel.*supported", TypeError, ffn=0.5, importance="l1")


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(ffn=1.0), "ffn must be a fraction in \\[0, 1\\)"), (dict(ffn=-0.1), "ffn"),
     (dict(heads=1.0), "heads must be"), (dict(heads="0.5"), "heads"),
     (dict(layers=3), "layers must be an int in \\[0, 2\\]"), (dict(layers=-1), "layers"),
     (dict(layers=1.0), "layers"), (dict(ffn=0.5, importance="magic"), "importance must be"),
     (dict(ffn=0.5), "needs calibration"), (dict(ffn=0.5, gqa="some"), "gqa must be"),
     (dict(ffn=0.5, importance="l1", iterations=0), "iterations"),
     (dict(ffn=0.5, calibration="text"), "calibration must be an iterable"),
     (dict(ffn=0.5, calibration=[]), "no batch"),
     (dict(ffn=0.5, importance="taylor", calibration=calib()), "returns a loss")],
)  # fmt: skip
def test_bad_arguments_raise_before_any_change(kwargs, match):
    exc = TypeError if "calibration must" in match else ValueError
    _bad(make("gpt2"), match, exc, **kwargs)


def test_bad_recovery_raises_before_any_change():
    model = make("bert")
    _bad(model, "needs a budget", ValueError, ffn=0.5, importance="l1", recovery=Recovery(calib()))
    _bad(model, "list of batches", TypeError, ffn=0.5, importance="l1",
         recovery=Recovery(iter(calib()), steps=1))  # fmt: skip
    _bad(model, "dicts with input_ids and attention_mask", TypeError, ffn=0.5, importance="l1",
         recovery=Recovery([torch.zeros(2, 3, dtype=torch.long)], steps=1))  # fmt: skip
    _bad(
        model,
        "steps must be",
        ValueError,
        ffn=0.5,
        importance="l1",
        recovery=Recovery(calib(), steps=0),
    )


# ---------------------------------------------------------------------------------------------
# Recovery


def test_recovery_distils_an_lm_iteratively():
    model = make("gpt2", lm=True)
    with torch.no_grad():  # blocks that matter (at init they barely touch the residual stream)
        for n, p in model.transformer.h.named_parameters():
            if n.endswith("weight") and p.dim() == 2:
                p.mul_(10)
    teacher = copy.deepcopy(model)
    data = [batch(seed=20 + i, b=4) for i in range(4)]
    report = prune_structure(model, ffn=0.5, heads=0.5, layers=1, calibration=calib(), iterations=2,
                             recovery=Recovery(data, steps=8, lr=1e-3, alpha=1.0, progress=False))  # fmt: skip
    runs = report.notes["recovery"]
    assert [r["steps"] for r in runs] == [4, 4]
    assert model.transformer.wte.weight.requires_grad  # frozen during recovery only
    assert torch.equal(model.transformer.wte.weight, teacher.transformer.wte.weight)

    def kl(student):
        with torch.no_grad():
            t = teacher(**data[0]).logits.log_softmax(-1)
            s = student(**data[0]).logits.log_softmax(-1)
        return float((t.exp() * (t - s)).sum(-1).mean())

    unrecovered = copy.deepcopy(teacher)
    prune_structure(unrecovered, ffn=0.5, heads=0.5, layers=1, calibration=calib(), iterations=2)
    assert kl(model) < kl(unrecovered)


def test_recovery_of_an_encoder_matches_the_kept_layers():
    model = make("bert")
    teacher = copy.deepcopy(model)
    data = [batch(seed=30 + i, b=4) for i in range(3)]
    report = prune_structure(model, ffn=0.5, layers=1, calibration=calib(),
                             recovery=Recovery(data, steps=3, lr=1e-3, progress=False))  # fmt: skip
    assert report.notes["recovery"][0]["steps"] == 3
    assert len(report.notes["kept_layers"]) == 2
    # the teacher given explicitly is not trained
    before = copy.deepcopy(teacher.state_dict())
    prune_structure(copy.deepcopy(teacher), ffn=0.5, calibration=calib(),
                    recovery=Recovery(data, steps=2, teacher=teacher, progress=False))  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
