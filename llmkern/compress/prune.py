"""prune(): N:M structured pruning of linear layers, then the swap to llmkern.nn.Sparse24Linear.

Scores come from llmkern.importance (magnitude, l1, Wanda = |w| * ||x_j||, Taylor =
|w * dL/dw|). One-shot: score, keep the best 2 of every 4 weights along K, swap. Iterative
(``schedule``): a list of fractions of 4-groups pruned after each step (e.g. ``[0.5, 1.0]``), the
cheapest groups first (sum of the scores they lose), with ``fine_tune(model, step)`` called after
every step while the masks hold (pruned weights are re-zeroed before every forward), then the swap.
With ``reconstruct=True`` the kept weights are re-fitted to the calibration data after every
step's masks (llmkern.compress.reconstruct).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from llmkern import importance as imp
from llmkern.compress.calibration import calibration_batches, call_model, collect_input_stats
from llmkern.compress.modules import as_linear, is_conv1d, linear_layers
from llmkern.compress.reconstruct import reconstruct as refit
from llmkern.compress.report import Report
from llmkern.compress.transaction import Transaction, require_targets

IMPORTANCES = ("magnitude", "l1", "wanda", "taylor")
PATTERNS = {"2:4": (2, 4)}


def _taylor_grads(model, names, data, max_batches):
    """Accumulated |dL/dw| per layer over the calibration batches (the model must return a loss)."""
    params = {n: model.get_submodule(n).weight for n in names}
    grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    for p, _, _ in was:
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    n_batches = 0
    try:
        for batch in data:
            if max_batches is not None and n_batches >= max_batches:
                break
            out = call_model(model, batch)
            loss = getattr(
                out, "loss", out if isinstance(out, torch.Tensor) and out.dim() == 0 else None
            )
            if loss is None:
                raise ValueError(
                    "importance='taylor' needs calibration batches for which the model returns a loss "
                    "(e.g. Hugging Face batches with labels)"
                )
            model.zero_grad(set_to_none=True)
            loss.backward()
            for n, p in params.items():
                grads[n] += p.grad.detach().float().abs()
            n_batches += 1
    finally:
        for p, flag, grad in was:  # the caller's gradients and flags, as they were
            p.grad = grad
            p.requires_grad_(flag)
    if n_batches == 0:
        raise ValueError("calibration data yielded no batch")
    return grads


def _scores(model, names, importance, data):
    stats = collect_input_stats(model, names, data) if importance == "wanda" else None
    grads = _taylor_grads(model, names, data, None) if importance == "taylor" else None
    out = {}
    for n in names:
        w = model.get_submodule(n).weight.detach()
        out[n] = imp.importance_scores(
            w, importance,
            act_norm=None if stats is None else stats[n].channel_norm,
            grad=None if grads is None else grads[n],
        )  # fmt: skip
    return out


def _step_mask(scores: torch.Tensor, prev: torch.Tensor | None, fraction: float, n: int, m: int):
    """Mask that prunes ``fraction`` of the m-groups to n:m, cheapest first, keeping ``prev``'s."""
    full = imp.nm_mask(scores, n, m)
    if fraction >= 1.0:
        return full
    rows, k = scores.shape
    lost = (scores * ~full).reshape(rows, k // m, m).sum(2).flatten()
    if prev is not None:  # groups pruned in an earlier step stay pruned
        already = (~prev).reshape(rows, k // m, m).any(2).flatten()
        lost = torch.where(already, float("-inf"), lost)
    chosen = torch.zeros_like(lost, dtype=torch.bool)
    chosen[torch.argsort(lost)[: round(fraction * lost.numel())]] = True
    chosen = chosen.reshape(rows, k // m, 1).expand(rows, k // m, m).reshape(rows, k)
    return torch.where(chosen, full, torch.ones_like(full))


def _parse_schedule(schedule) -> list[float]:
    if schedule is None:
        return [1.0]
    if isinstance(schedule, int) and not isinstance(schedule, bool):
        if schedule < 1:
            raise ValueError(f"schedule must be >= 1 steps, got {schedule}")
        return [(i + 1) / schedule for i in range(schedule)]
    fr = [float(f) for f in schedule]
    if not fr or fr[-1] != 1.0 or any(not 0 < f <= 1 for f in fr) or fr != sorted(fr):
        raise ValueError(
            f"schedule must be increasing fractions in (0, 1] ending at 1.0, got {schedule}"
        )
    return fr


def prune(
    model: nn.Module,
    pattern: str = "2:4",
    importance: str = "magnitude",
    calibration=None,
    schedule: int | Sequence[float] | None = None,
    fine_tune: Callable[[nn.Module, int], None] | None = None,
    skip: list[str] | None = None,
    *,
    reconstruct: bool = False,
    max_batches: int | None = None,
) -> Report:
    """Prune ``model``'s linear layers to ``pattern`` in place and swap them for Sparse24Linear.

    ``importance``: magnitude | l1 | wanda (needs ``calibration``) | taylor (needs calibration
    batches for which the model returns a loss). ``schedule``: None (one shot), a number of steps,
    or increasing fractions ending at 1.0; ``fine_tune(model, step)`` runs after each step.
    ``reconstruct``: after each step's masks, re-fit the kept weights layer by layer so each layer
    reproduces its unpruned outputs on the calibration inputs (least squares, see
    llmkern.compress.reconstruct; needs ``calibration``).
    ``calibration`` (and ``max_batches``, which limits it) is refused when nothing reads it.
    Layers whose input size is not a multiple of 4 stay dense (reported).

    All or nothing: arguments and calibration are checked first, and if anything fails
    (including ``fine_tune``) the model is left exactly as it was; with a schedule, ``reconstruct``
    or ``fine_tune`` the weights change in place during the call, so prune keeps a copy of them
    (of the whole model's parameters with ``fine_tune``) until it returns. A model with no float
    linear layer (e.g. pruned or quantised already) is a ValueError: prune before quantize."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {list(PATTERNS)}, got {pattern!r}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if importance in ("wanda", "taylor") and calibration is None:
        raise ValueError(f"importance={importance!r} needs calibration batches")
    if reconstruct and calibration is None:
        raise ValueError("reconstruct=True needs calibration batches")
    if fine_tune is not None and not callable(fine_tune):
        raise TypeError("fine_tune must be a callable fine_tune(model, step)")
    fractions = _parse_schedule(schedule)
    n, m = PATTERNS[pattern]
    needs_data = importance in ("wanda", "taylor") or reconstruct
    for name, value in (("calibration", calibration), ("max_batches", max_batches)):
        if value is not None and not needs_data:
            raise ValueError(
                f"{name} is read only with importance='wanda' or 'taylor' or reconstruct=True; "
                f"importance={importance!r} without reconstruct does not use it"
            )
    data = calibration_batches(calibration, max_batches) if needs_data else None
    from llmkern.nn import Sparse24Linear

    layers = linear_layers(model, skip)
    require_targets("prune", model, layers, "Prune a float model, then quantize it (2:4 + int8).")
    report = Report(f"prune {pattern} {importance}").start(model)
    # Weights change in place during the call only when later steps, the re-fit or fine_tune
    # must see the pruned model; one shot builds the sparse layers from weight * mask.
    in_place = len(fractions) > 1 or reconstruct or fine_tune is not None

    with Transaction(model) as txn:
        if fine_tune is not None:
            txn.save_module(model)  # user code may train anything
        targets = []
        for name, mod in layers:
            if as_linear(mod).in_features % m:
                report.add(name, mod, mod, f"kept dense (in_features not a multiple of {m})")
                continue
            if is_conv1d(mod):
                txn.swap(name, as_linear(mod))
            targets.append((name, mod))
        names = [t[0] for t in targets]
        if in_place:
            txn.save(*(model.get_submodule(name).weight for name in names))
        masks = _find_masks(model, names, importance, data, fractions, n, m, in_place,
                            reconstruct, fine_tune)  # fmt: skip

        for name, before in targets:
            lin = model.get_submodule(name)
            new = Sparse24Linear.from_weight(lin.weight.detach() * masks[name], lin.bias)
            txn.swap(name, new)
            steps = f", {len(fractions)} steps" if len(fractions) > 1 else ""
            refitted = ", re-fitted" if reconstruct else ""
            report.add(name, before, new, f"{pattern} by {importance}{steps}{refitted}")
    return report.finish(model)


def _find_masks(model, names, importance, data, fractions, n, m, in_place, reconstruct, fine_tune):
    """The keep mask of every layer in ``names`` after the schedule's steps (with the weights
    masked, re-fitted and fine-tuned in place between steps when ``in_place``)."""
    masks: dict[str, torch.Tensor] = {}

    def enforce(module, _args):
        mask = masks.get(module._llmkern_name)  # none yet while the first scores are computed
        if mask is not None:
            with torch.no_grad():
                module.weight.mul_(mask)

    hooks = []
    for name in names:
        lin = model.get_submodule(name)
        lin._llmkern_name = name
        hooks.append(lin.register_forward_pre_hook(enforce))
    try:
        for step, fraction in enumerate(fractions):
            scores = _scores(model, names, importance, data)
            if reconstruct:  # the weights each layer's re-fit reproduces, before this step's mask
                unpruned = {
                    layer: model.get_submodule(layer).weight.detach().clone() for layer in names
                }
            for name in names:
                masks[name] = _step_mask(scores[name].float(), masks.get(name), fraction, n, m)
                if in_place:
                    with torch.no_grad():
                        model.get_submodule(name).weight.mul_(masks[name])
            if reconstruct:
                refit(model, unpruned, masks, data)
            if fine_tune is not None:
                fine_tune(model, step)
    finally:
        for h in hooks:
            h.remove()
        for name in names:
            del model.get_submodule(name)._llmkern_name
    return masks
