"""distill(): train a student to match a teacher (knowledge distillation).

The loss, per batch:

- both models are language models with a plain linear LM head (Hugging Face ``*ForCausalLM`` /
  ``*LMHeadModel`` included): llmkern.nn.FusedLinearKDLoss on the backbones' last hidden states
  and the heads' weights, so the [tokens, vocab] logits are never materialised;
- otherwise: llmkern.nn.KDLoss on the two models' output logits;
- or any ``loss_fn(student, teacher, batch) -> scalar`` the caller gives (e.g. for embedding
  models).

Hard labels (weight ``1 - alpha``) come from ``batch["labels"]``, or for a causal LM from the
next tokens of ``input_ids`` (padding ignored). The loop does gradient accumulation, optional
bf16 autocast, evaluation and checkpoint callbacks, a time limit and a progress bar; under
torchrun (torch.distributed initialised with more than one process) the student is wrapped in
DistributedDataParallel and every process takes every world_size-th batch.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from llmkern.compress.calibration import call_model, to_device
from llmkern.compress.modules import model_device

IGNORE_INDEX = -100


def _is_causal_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


def lm_parts(model: nn.Module):
    """(backbone, head weight) when ``model`` is an LM whose head is a bias-free nn.Linear."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    base = getattr(model, "base_model", None)
    if type(head) is not nn.Linear or head.bias is not None or base is None or base is model:
        return None
    return base, head.weight


def _hidden(base: nn.Module, batch: dict) -> torch.Tensor:
    inputs = {
        k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")
    }
    out = base(**inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def lm_labels(batch, causal: bool):
    """Hard labels aligned with the (possibly shifted) positions, or None."""
    if not isinstance(batch, dict):
        return None
    labels = batch.get("labels")
    if labels is None and causal and "input_ids" in batch:
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    if labels is None:
        return None
    return labels[:, 1:] if causal else labels


def _shift(t: torch.Tensor, causal: bool) -> torch.Tensor:
    """Positions that predict a next token: all but the last for a causal LM."""
    return t[:, :-1] if causal else t


def choose_loss(teacher: nn.Module, student: nn.Module) -> str:
    both = lm_parts(student) is not None and lm_parts(teacher) is not None
    return "fused_linear_kd" if both else "kd"


class _StudentLoss(nn.Module):
    """The student plus the loss, as one module, so DistributedDataParallel wraps the whole
    forward (the teacher is held outside the module tree: it is neither trained nor synced)."""

    def __init__(self, student, teacher, kind, loss_fn, temperature, alpha):
        super().__init__()
        from llmkern.nn import FusedLinearKDLoss, KDLoss

        self.student = student
        self._teacher = [teacher]
        self.loss_fn = loss_fn
        self.kind = kind
        self.kd = (FusedLinearKDLoss if kind == "fused_linear_kd" else KDLoss)(temperature, alpha)
        self.causal = _is_causal_lm(student)

    def forward(self, batch):
        teacher = self._teacher[0]
        if self.loss_fn is not None:
            return self.loss_fn(self.student, teacher, batch)
        labels = lm_labels(batch, self.causal)
        if self.kind == "fused_linear_kd":
            s_base, s_head = lm_parts(self.student)
            t_base, t_head = lm_parts(teacher)
            with torch.no_grad():
                t_h = _shift(_hidden(t_base, batch), self.causal)
            s_h = _shift(_hidden(s_base, batch), self.causal)
            return self.kd(s_h, s_head, t_h.to(s_h.dtype), t_head.to(s_head.dtype), labels)
        with torch.no_grad():
            t_logits = _shift(_logits(call_model(teacher, batch)), self.causal)
        s_logits = _shift(_logits(call_model(self.student, batch)), self.causal)
        return self.kd(s_logits, t_logits, labels)


@dataclass
class DistillReport:
    loss: str
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    stopped: str = ""

    def __str__(self) -> str:
        first = f"{self.losses[0]:.4f}" if self.losses else "-"
        last = f"{sum(self.losses[-10:]) / len(self.losses[-10:]):.4f}" if self.losses else "-"
        lines = [f"llmkern distill ({self.loss} loss): {self.steps} steps in {self.seconds:.1f} s, "
                 f"loss {first} -> {last} (mean of last 10){', ' + self.stopped if self.stopped else ''}"]  # fmt: skip
        lines += [f"  eval at step {e['step']}: {e['result']}" for e in self.evals]
        return "\n".join(lines)


def _make_optimizer(optimizer, params, lr):
    if optimizer is None:
        return torch.optim.AdamW(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(params)
    raise TypeError("optimizer must be a torch.optim.Optimizer, a callable(params) or None")


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data,
    temperature: float = 2.0,
    alpha: float = 0.5,
    steps: int | None = None,
    optimizer=None,
    *,
    lr: float = 1e-4,
    loss_fn: Callable | None = None,
    grad_accum: int = 1,
    bf16: bool = False,
    max_seconds: float | None = None,
    eval_fn: Callable[[nn.Module], object] | None = None,
    eval_every: int = 0,
    checkpoint_fn: Callable[[nn.Module, int], None] | None = None,
    checkpoint_every: int = 0,
    clip_grad: float | None = 1.0,
    lr_decay: bool = False,
    progress: bool = True,
) -> DistillReport:
    """Distil ``teacher`` into ``student`` (trained in place) over ``data``, an iterable of
    batches, repeated as needed for ``steps`` optimizer steps of ``grad_accum`` batches each
    (one pass when ``steps`` is None), stopping early after ``max_seconds``. ``lr_decay``: the
    learning rate falls linearly to 0 over the run (its progress is the larger of the step and
    time fractions). Returns a :class:`DistillReport` with the loss per step and the
    ``eval_fn(student)`` results."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    rank, world = _world()
    kind = "custom" if loss_fn is not None else choose_loss(teacher, student)
    device = model_device(student)
    teacher.eval()
    student.train()
    module = _StudentLoss(student, teacher, kind, loss_fn, temperature, alpha)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameter")
    opt = _make_optimizer(optimizer, params, lr)
    base_lrs = [g["lr"] for g in opt.param_groups]

    def batches():
        epochs = itertools.count() if steps is not None else range(1)
        for _ in epochs:
            n = 0
            for i, b in enumerate(data):
                if i % world == rank:
                    n += 1
                    yield b
            if n == 0:
                raise ValueError(
                    "distill: data yielded no batch" + (f" for rank {rank}" if world > 1 else "")
                )

    from tqdm.auto import tqdm

    report = DistillReport(kind)
    bar = tqdm(
        total=steps, disable=not progress or rank != 0, desc=f"distill ({kind})", unit="step"
    )
    t0 = time.perf_counter()
    it = batches()
    try:
        while steps is None or report.steps < steps:
            total, got = 0.0, 0
            opt.zero_grad(set_to_none=True)
            for micro in range(grad_accum):
                batch = next(it, None)
                if batch is None:
                    break
                batch = to_device(batch, device)
                sync = micro == grad_accum - 1 or world == 1
                ctx = module.no_sync() if not sync else contextlib.nullcontext()
                with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = module(batch) / grad_accum
                loss.backward()
                total += float(loss.detach())
                got += 1
            if got == 0:
                break
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            opt.step()
            report.steps += 1
            if lr_decay:
                _decay(opt, base_lrs, report.steps, steps, time.perf_counter() - t0, max_seconds)
            report.losses.append(total * grad_accum / got)
            bar.update(1)
            bar.set_postfix(loss=f"{report.losses[-1]:.4f}")
            if eval_fn is not None and eval_every and report.steps % eval_every == 0:
                _evaluate(eval_fn, student, report)
            if (
                checkpoint_fn is not None
                and checkpoint_every
                and report.steps % checkpoint_every == 0
            ):
                if rank == 0:
                    checkpoint_fn(student, report.steps)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                report.stopped = f"time limit {max_seconds:g} s reached"
                break
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    if eval_fn is not None and (not report.evals or report.evals[-1]["step"] != report.steps):
        _evaluate(eval_fn, student, report)
    student.eval()
    return report


def _decay(opt, base_lrs, step, steps, elapsed, max_seconds):
    done = max(step / steps if steps else 0.0, elapsed / max_seconds if max_seconds else 0.0)
    for g, lr in zip(opt.param_groups, base_lrs, strict=True):
        g["lr"] = lr * max(0.0, 1.0 - done)


def _evaluate(eval_fn, student, report):
    was = student.training
    student.eval()
    with torch.no_grad():
        result = eval_fn(student)
    student.train(was)
    report.evals.append({"step": report.steps, "result": result})
