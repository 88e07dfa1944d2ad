"""distill(): train a student to match a teacher (knowledge distillation).

The loss, per batch:

- both models are language models with a plain linear LM head (Hugging Face ``*ForCausalLM`` /
  ``*LMHeadModel`` included) whose logits are exactly ``head(last hidden state)``:
  llmkern.nn.FusedLinearKDLoss on the backbones' last hidden states and the heads' weights, so
  the [tokens, vocab] logits are never materialised. A model that post-processes its logits
  (Gemma-2's ``config.final_logit_softcapping``, or any model whose logits on the first batch
  differ from its head applied to its backbone's output) gets the next form instead;
- otherwise: llmkern.nn.KDLoss on the two models' output logits (an output tensor, or an output
  with ``.logits``; a model without logits, e.g. a bare encoder, is a TypeError unless
  ``loss_fn`` is given: its hidden states are not logits);
- or any ``loss_fn(student, teacher, batch) -> scalar`` the caller gives (e.g. for embedding
  models).

Hard labels (weight ``1 - alpha``) come from ``batch["labels"]``, or for a causal LM from the
next tokens of ``input_ids`` (padding ignored). The loop does gradient accumulation, optional
bf16 autocast, evaluation and checkpoint callbacks, a time limit and a progress bar; under
torchrun (torch.distributed initialised with more than one process) the student is wrapped in
DistributedDataParallel and every process takes every world_size-th batch.

``data`` is an iterable of batches (one batch alone is refused). A list or a DataLoader is
repeated as needed for ``steps``; an iterator (a generator) is read once: when it runs out
before ``steps``, training stops there with a warning and the report says so
(``report.stopped``).
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from llmkern.compress.calibration import call_model, check_batches, to_device
from llmkern.compress.modules import model_device
from llmkern.ops._checks import check_float_scalar

IGNORE_INDEX = -100
TEMPERATURE, ALPHA, LR = 2.0, 0.5, 1e-4  # distill's defaults


def check_loss_options(loss_fn, temperature, alpha, prefix: str = "") -> None:
    """``temperature`` and ``alpha`` configure the built-in KD loss: with a custom ``loss_fn``
    they would be ignored, so a value other than the default is a ValueError."""
    if loss_fn is None:
        return
    for name, value, default in (
        ("temperature", temperature, TEMPERATURE),
        ("alpha", alpha, ALPHA),
    ):
        if value != default:
            raise ValueError(
                f"{prefix}{name}={value!r} configures the built-in KD loss, which a custom "
                f"{prefix}loss_fn replaces: leave {prefix}{name} at its default ({default})"
            )


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


def _logits(out, who: str = "model") -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"distill: the {who}'s output ({type(out).__name__}) has no logits (a tensor, or .logits), "
        "which the KD loss needs; for other models pass loss_fn(student, teacher, batch)"
    )


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


# Config entries of Hugging Face models that change the logits after the LM head.
LOGIT_POSTPROCESSING = ("final_logit_softcapping",)


@torch.no_grad()
def _head_gives_logits(model: nn.Module, batch) -> bool:
    """Whether ``model``'s logits are its LM head applied to its backbone's last hidden state
    (so the fused linear KD loss computes the KD loss of the real logits): no known logit
    post-processing in its config and, given a batch, the same numbers on it."""
    config = getattr(model, "config", None)
    if any(getattr(config, a, None) not in (None, 0) for a in LOGIT_POSTPROCESSING):
        return False
    if batch is None:
        return True
    if not isinstance(batch, dict):  # the fused path feeds the backbone a dict batch
        return False
    base, head = lm_parts(model)
    was = model.training
    model.eval()
    try:
        logits = _logits(call_model(model, batch))
        fused = torch.nn.functional.linear(_hidden(base, batch), head)  # as the head computes
    finally:
        model.train(was)
    if logits.shape != fused.shape:
        return False
    tol = 16 * torch.finfo(logits.dtype).eps * float(logits.abs().max()) + 1e-6
    return float((logits.float() - fused.float()).abs().max()) <= tol


def choose_loss(teacher: nn.Module, student: nn.Module, batch=None) -> str:
    """``"fused_linear_kd"`` when both models are LMs whose logits are ``head(hidden)`` (checked
    on ``batch`` when given), else ``"kd"`` (KD on the models' real logits)."""
    for m in (student, teacher):
        if lm_parts(m) is None or not _head_gives_logits(m, batch):
            return "kd"
    return "fused_linear_kd"


@torch.no_grad()
def _check_logits(teacher: nn.Module, student: nn.Module, batch) -> None:
    """Both models must give logits (for the KD loss on logits): checked on the first batch."""
    for who, m in (("teacher", teacher), ("student", student)):
        was = m.training
        m.eval()
        try:
            _logits(call_model(m, batch), who)
        finally:
            m.train(was)


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
            t_logits = _shift(_logits(call_model(teacher, batch), "teacher"), self.causal)
        s_logits = _shift(_logits(call_model(self.student, batch), "student"), self.causal)
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


@contextlib.contextmanager
def no_dropout(model: nn.Module):
    """Dropout off while training: the student should match the (eval-mode) teacher exactly."""
    saved = [(m, m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    for m, _ in saved:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in saved:
            m.p = p


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
    temperature: float = TEMPERATURE,
    alpha: float = ALPHA,
    steps: int | None = None,
    optimizer=None,
    *,
    lr: float = LR,
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
    ``eval_fn(student)`` results.

    Options that would not apply are refused (ValueError): ``temperature`` / ``alpha`` other
    than the defaults with a custom ``loss_fn``, ``lr`` with an ``optimizer`` (which has its
    own), ``eval_every`` without ``eval_fn``, ``checkpoint_fn`` and ``checkpoint_every`` one
    without the other, ``lr_decay`` without ``steps`` or ``max_seconds`` to decay over."""
    check_float_scalar("temperature", temperature, low=0.0, low_open=True)
    check_float_scalar("alpha", alpha, low=0.0, high=1.0)
    for name, v in (("steps", steps), ("grad_accum", grad_accum)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for name, v in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0 (0: never), got {v!r}")
    check_batches(data, "data")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError("loss_fn must be a callable loss_fn(student, teacher, batch)")
    check_loss_options(loss_fn, temperature, alpha)
    if optimizer is not None and lr != LR:
        raise ValueError(f"lr={lr!r} applies to the default AdamW; the given optimizer has its own")
    if eval_every and eval_fn is None:
        raise ValueError("eval_every needs eval_fn (the evaluation to run)")
    if (checkpoint_fn is None) != (not checkpoint_every):
        raise ValueError(
            "checkpoint_fn and checkpoint_every go together: checkpoint_fn(student, step) is "
            "called every checkpoint_every steps"
        )
    if lr_decay and steps is None and max_seconds is None:
        raise ValueError("lr_decay needs steps or max_seconds (the run it decays over)")
    rank, world = _world()
    device = model_device(student)
    it = _batches(data, steps, rank, world)
    first = next(it)  # "no batch" is an error here, before anything is trained
    it = itertools.chain([first], it)
    if loss_fn is not None:
        kind = "custom"
    else:
        kind = choose_loss(teacher, student, to_device(first, device))
        if kind == "kd":
            _check_logits(teacher, student, to_device(first, device))
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

    from tqdm.auto import tqdm

    report = DistillReport(kind)
    bar = tqdm(
        total=steps, disable=not progress or rank != 0, desc=f"distill ({kind})", unit="step"
    )
    t0 = time.perf_counter()
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
            if got == 0 and steps is None:  # the one pass is done
                break
            if got == 0:  # an iterator read to its end before `steps`
                report.stopped = (
                    f"data ran out after {report.steps} steps (an iterator is read once; "
                    "pass a list or a DataLoader to repeat it)"
                )
                warnings.warn(f"distill: {report.stopped}", stacklevel=2)
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


def _batches(data, steps, rank, world):
    """This process's batches: one pass over ``data`` when ``steps`` is None, else passes
    repeated until the caller stops (a one-shot iterator simply ends after its first pass)."""
    epochs = itertools.count() if steps is not None else range(1)
    for epoch in epochs:
        n = 0
        for i, b in enumerate(data):
            if i % world == rank:
                n += 1
                yield b
        if n == 0:
            if epoch == 0:
                raise ValueError(
                    "distill: data yielded no batch" + (f" for rank {rank}" if world > 1 else "")
                )
            return


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
