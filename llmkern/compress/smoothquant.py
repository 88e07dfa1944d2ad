"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before int8
quantisation, with an exactly equivalent float model.

For a group of linear layers reading the same input X, per input channel j:

    s_j = max|X_j|^alpha / max_over_group |W_:,j|^(1 - alpha)
    X' = X / s (folded into the producer of X),  W' = W * s (columns)

so X' @ W'.T == X @ W.T. The producer is either a normalisation layer whose output is exactly X
(found by tracing one calibration batch: the linear's input is the very tensor the norm returned)
or a linear layer whose output rows reach X through attention or a gated product (value -> output
projection, up -> down projection; found by sibling names). Each group is applied and then
checked: if the model's output on a calibration batch moved (say a post-LayerNorm model, where
the norm's output also feeds the residual), the group gets its exact former weights back and is
reported as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from llmkern.compress.calibration import InputStats, call_model

# (producer suffix, consumer suffix) of linear -> linear pairs inside one block, and which slice
# of the producer's output rows feeds the consumer ("all", or "last_third" for GPT-2's fused qkv).
LINEAR_PAIRS = (
    ("attention.self.value", "attention.output.dense", "all"),  # BERT
    ("self_attn.v_proj", "self_attn.o_proj", "all"),  # Llama, Mistral, Qwen
    ("mlp.up_proj", "mlp.down_proj", "all"),  # gated MLPs: act(gate(x)) * up(x)
    ("attn.c_attn", "attn.c_proj", "last_third"),  # GPT-2 (q, k, v fused)
)
EQUIVALENCE_RTOL = 1e-3


@dataclass
class SmoothGroup:
    producer: str
    consumers: list[str]
    rows: slice | None = None  # producer output rows (linear producers only)
    applied: bool = False
    scales: torch.Tensor | None = field(default=None, repr=False)


def _is_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return type(m).__name__.endswith("Norm") and isinstance(w, torch.Tensor) and w.dim() == 1


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    if isinstance(out, (list, tuple)):
        return _first_tensor(out[0])
    raise TypeError(f"cannot find a tensor in the model output of type {type(out).__name__}")


@torch.no_grad()
def find_groups(model: nn.Module, linear_names: list[str], batch) -> list[SmoothGroup]:
    """Smoothing groups among ``linear_names``: norm -> linears (traced) and linear -> linear pairs."""
    wanted = set(linear_names)
    norm_out: dict[int, tuple[str, torch.Tensor]] = {}
    consumers: dict[str, list[str]] = {}
    handles = []
    for name, m in model.named_modules():
        if _is_norm(m):
            handles.append(m.register_forward_hook(
                lambda _m, _a, out, name=name: norm_out.__setitem__(id(out), (name, out))))  # fmt: skip
        elif name in wanted:

            def pre(_m, args, name=name):
                hit = norm_out.get(id(args[0]))
                if hit is not None and hit[1] is args[0]:
                    consumers.setdefault(hit[0], []).append(name)

            handles.append(m.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    groups = [SmoothGroup(norm, names) for norm, names in consumers.items()]
    for name in linear_names:
        for prod_suffix, cons_suffix, rows in LINEAR_PAIRS:
            if not name.endswith(cons_suffix):
                continue
            producer = name[: -len(cons_suffix)] + prod_suffix
            try:
                p = model.get_submodule(producer)
            except AttributeError:
                continue
            if not isinstance(p, nn.Linear):
                continue
            k = model.get_submodule(name).in_features
            n = p.out_features
            sl = slice(0, n) if rows == "all" else slice(2 * n // 3, n)
            if sl.stop - sl.start == k:  # e.g. grouped-query attention does not line up: skip
                groups.append(SmoothGroup(producer, [name], sl))
    return groups


def _scales(model, group: SmoothGroup, stats: dict[str, InputStats], alpha: float) -> torch.Tensor:
    act = torch.stack([stats[c].absmax for c in group.consumers]).amax(0)
    w = torch.stack(
        [model.get_submodule(c).weight.detach().abs().amax(0).float() for c in group.consumers]
    )
    w = w.amax(0)
    s = act.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1.0 - alpha)
    return s.clamp(min=1e-5)


def _group_tensors(model, group: SmoothGroup) -> list[torch.Tensor]:
    """The tensors :func:`_apply` changes in place."""
    prod = model.get_submodule(group.producer)
    out = [prod.weight, getattr(prod, "bias", None)]
    out += [model.get_submodule(c).weight for c in group.consumers]
    return [t for t in out if t is not None]


@torch.no_grad()
def _apply(model, group: SmoothGroup, s: torch.Tensor) -> None:
    prod = model.get_submodule(group.producer)
    if group.rows is None:
        prod.weight.div_(s.to(prod.weight.dtype))
        if getattr(prod, "bias", None) is not None:
            prod.bias.div_(s.to(prod.bias.dtype))
    else:
        prod.weight[group.rows].div_(s.to(prod.weight.dtype)[:, None])
        if prod.bias is not None:
            prod.bias[group.rows].div_(s.to(prod.bias.dtype))
    for c in group.consumers:
        lin = model.get_submodule(c)
        lin.weight.mul_(s.to(lin.weight.dtype)[None, :])


@torch.no_grad()
def smooth(
    model: nn.Module, stats: dict[str, InputStats], alpha: float, batch, save=None
) -> list[SmoothGroup]:
    """Apply SmoothQuant to every group whose folding keeps ``model``'s output on ``batch``;
    ``stats`` are the layers' input statistics collected on the unsmoothed model. A group that
    is not kept gets its exact former values back. ``save(*tensors)`` is called before any
    tensor changes (llmkern.compress.transaction.Transaction.save)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothquant alpha must be in [0, 1], got {alpha}")
    groups = find_groups(model, list(stats), batch)
    was_training = model.training
    model.eval()
    ref = _first_tensor(call_model(model, batch)).float()
    tol = EQUIVALENCE_RTOL * float(ref.abs().max().clamp(min=1e-6))
    try:
        for g in groups:
            s = _scales(model, g, stats, alpha)
            touched = _group_tensors(model, g)
            if save is not None:
                save(*touched)
            before = [t.clone() for t in touched]
            _apply(model, g, s)
            out = _first_tensor(call_model(model, batch)).float()
            if float((out - ref).abs().max()) <= tol:
                g.applied, g.scales = True, s
                # Later groups read inputs that are now divided by s.
                for c in g.consumers:
                    stats[c] = InputStats(
                        stats[c].absmax / s, stats[c].sumsq / s.square(), stats[c].rows
                    )
            else:
                for t, b in zip(touched, before, strict=True):
                    t.copy_(b)
    finally:
        model.train(was_training)
    return groups
