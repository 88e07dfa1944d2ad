"""The distill() training loop: loss choice, the loss going down, gradient accumulation,
callbacks, time limit, bad arguments, and DistributedDataParallel (gloo, two processes)."""

import copy

import pytest
import torch
from torch import nn

from llmkern.compress import distill
from llmkern.compress.distill import choose_loss

V = 50


class TinyLM(nn.Module):
    """Token ids -> logits, no separate head: distill uses the plain KD loss on the logits."""

    def __init__(self, d=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(V, d)
        self.mix = nn.Linear(d, d)
        self.out = nn.Linear(d, V)

    def forward(self, input_ids):
        return self.out(torch.tanh(self.mix(self.emb(input_ids))))


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, V, (4, 6), generator=g)} for _ in range(n)]


def _sharp_teacher():
    t = TinyLM(seed=1)
    with torch.no_grad():
        t.out.weight.mul_(4.0)  # a confident teacher, far from the student
    return t


def test_plain_models_use_kd_loss_and_loss_decreases():
    teacher, student = _sharp_teacher(), TinyLM(seed=2)
    rep = distill(
        teacher, student, _data(), temperature=2.0, alpha=1.0, steps=40, lr=3e-2, progress=False
    )
    assert rep.loss == "kd" and rep.steps == 40
    assert sum(rep.losses[-5:]) / 5 < 0.5 * sum(rep.losses[:5]) / 5
    assert not student.training


def test_teacher_is_not_trained():
    teacher, student = _sharp_teacher(), TinyLM(seed=2)
    before = copy.deepcopy(teacher.state_dict())
    distill(teacher, student, _data(2), steps=3, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_grad_accumulation_matches_one_big_batch():
    teacher = _sharp_teacher()
    data = _data(2)
    big = [{"input_ids": torch.cat([d["input_ids"] for d in data])}]
    a, b = TinyLM(seed=3), TinyLM(seed=3)
    sgd = lambda params: torch.optim.SGD(params, lr=0.5)
    distill(teacher, a, data, steps=1, grad_accum=2, optimizer=sgd, clip_grad=None, progress=False)
    distill(teacher, b, big, steps=1, optimizer=sgd, clip_grad=None, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_callbacks_time_limit_bf16_and_custom_loss():
    teacher, student = _sharp_teacher(), TinyLM(seed=2)
    evals, ckpts = [], []
    rep = distill(
        teacher, student, _data(), steps=6, bf16=True, progress=False,
        eval_fn=lambda m: evals.append(m.training) or len(evals), eval_every=2,
        checkpoint_fn=lambda m, step: ckpts.append(step), checkpoint_every=3,
    )  # fmt: skip
    assert [e["step"] for e in rep.evals] == [2, 4, 6] and evals == [False] * 3
    assert ckpts == [3, 6] and all(torch.isfinite(torch.tensor(rep.losses)))
    rep = distill(teacher, student, _data(), steps=10_000, max_seconds=0.0, progress=False)
    assert rep.steps == 1 and "time limit" in rep.stopped
    seen = []
    custom = lambda s, t, b: (
        seen.append(1) or (s(b["input_ids"]) - t(b["input_ids"])).square().mean()
    )
    rep = distill(teacher, student, _data(), steps=2, loss_fn=custom, progress=False)
    assert rep.loss == "custom" and len(seen) == 2
    rep = distill(teacher, student, _data(3), progress=False)  # steps=None: one pass over the data
    assert rep.steps == 3
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    distill(teacher, student, _data(), steps=4, optimizer=opt, lr_decay=True, progress=False)
    assert opt.param_groups[0]["lr"] == 0.0


def test_bad_arguments():
    t, s = TinyLM(), TinyLM()
    with pytest.raises(ValueError, match="temperature"):
        distill(t, s, _data(), temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distill(t, s, _data(), alpha=1.5)
    with pytest.raises(ValueError, match="grad_accum"):
        distill(t, s, _data(), grad_accum=0)
    with pytest.raises(ValueError, match="no batch"):
        distill(t, s, [], steps=2, progress=False)


def test_hf_causal_lms_use_the_fused_loss_and_learn():
    transformers = pytest.importorskip("transformers")
    cfg = lambda d, n: transformers.GPT2Config(
        vocab_size=V, n_positions=16, n_embd=d, n_layer=n, n_head=2
    )
    torch.manual_seed(0)
    teacher = transformers.GPT2LMHeadModel(cfg(32, 2)).eval()
    student = transformers.GPT2LMHeadModel(cfg(16, 1))
    assert choose_loss(teacher, student) == "fused_linear_kd"
    data = _data(4)
    rep = distill(
        teacher, student, data, temperature=1.0, alpha=0.5, steps=30, lr=1e-2, progress=False
    )
    assert rep.loss == "fused_linear_kd"
    assert sum(rep.losses[-5:]) / 5 < 0.8 * sum(rep.losses[:5]) / 5


# --------------------------------------------------------------------------------------------
# DistributedDataParallel, gloo, two processes on loopback
# --------------------------------------------------------------------------------------------


def _ddp_worker(rank, world):
    teacher = _sharp_teacher()
    student = TinyLM(seed=10 + rank)  # different on purpose: DDP broadcasts rank 0's weights
    rep = distill(teacher, student, _data(8), steps=12, lr=3e-2, progress=False)
    return {"state": student.state_dict(), "losses": rep.losses}


def test_distill_under_ddp_gloo_two_processes(ddp):
    r0, r1 = ddp(_ddp_worker)
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k  # gradients were averaged: identical students
    assert r0["losses"] != r1["losses"]  # each process saw its own half of the batches
    assert sum(r0["losses"][-3:]) < sum(r0["losses"][:3])
