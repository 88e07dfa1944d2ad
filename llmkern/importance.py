"""Importance scores for pruning and the masks they give.

A score has the weight's shape [out, in]; higher means keep. Three scores:

- magnitude (L1): ``|W|``;
- Wanda (Sun et al., 2023): ``|W| * ||X_j||_2``, the weight magnitude times the L2 norm of input
  channel j over calibration tokens (collect the norms with :class:`ActivationNorms`);
- Taylor / gradient: ``sum over batches |W * dL/dW|``, the first-order estimate of the loss change
  when a weight is removed (accumulate it with :class:`TaylorScores`).

Masks: :func:`nm_mask` (n of every m consecutive along the input dim, e.g. 2:4 or 4:8; the one
the 2:4 kernels need) and :func:`unstructured_mask` (a fraction of each row, or of the whole
tensor). ``weight * mask`` is the pruned weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from llmkern.ops._checks import check_shape, check_tensor
from llmkern.ops.sparse24 import nm_mask

__all__ = [
    "ActivationNorms",
    "TaylorScores",
    "importance_scores",
    "magnitude_scores",
    "nm_mask",
    "unstructured_mask",
    "taylor_scores",
    "wanda_scores",
]

METHODS = ("magnitude", "l1", "wanda", "taylor")


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|W|`` in float32."""
    check_tensor("weight", weight, ndim=2)
    return weight.detach().float().abs()


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * act_norm[None, :]`` with act_norm [in_features] the per-input-channel L2 norm of
    the layer's inputs over calibration tokens."""
    check_tensor("weight", weight, ndim=2)
    check_tensor("act_norm", act_norm, ndim=1)
    check_shape("act_norm", act_norm, (weight.shape[1],))
    return weight.detach().float().abs() * act_norm.detach().float().to(weight.device)[None, :]


def taylor_scores(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``|W * grad|``: for one batch's dL/dW, or for the sum of |dL/dW| over batches (equal to the
    sum of per-batch scores, W being fixed); :class:`TaylorScores` accumulates it with hooks."""
    check_tensor("weight", weight, ndim=2)
    check_tensor("grad", grad)
    check_shape("grad", grad, tuple(weight.shape))
    return (weight.detach().float() * grad.detach().float()).abs()


def importance_scores(
    weight: torch.Tensor,
    method: str,
    *,
    act_norm: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores of ``method`` for ``weight``: magnitude (alias l1), wanda (needs ``act_norm``) or
    taylor (needs ``grad``, the sum over batches of |dL/dW|; |W| * that equals the sum of
    |W * dL/dW| since W is fixed during calibration). ``act_norm`` / ``grad`` given to another
    method would be ignored: a ValueError."""
    for name, value, user in (("act_norm", act_norm, "wanda"), ("grad", grad, "taylor")):
        if value is not None and method != user:
            raise ValueError(f"{name} applies to importance {user!r} only, not {method!r}")
    if method in ("magnitude", "l1"):
        return magnitude_scores(weight)
    if method == "wanda":
        if act_norm is None:
            raise ValueError("importance 'wanda' needs act_norm (see ActivationNorms)")
        return wanda_scores(weight, act_norm)
    if method == "taylor":
        if grad is None:
            raise ValueError("importance 'taylor' needs grad, the accumulated |dL/dW|")
        return taylor_scores(weight, grad)
    raise ValueError(f"importance must be one of {METHODS}, got {method!r}")


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool = True) -> torch.Tensor:
    """Boolean mask dropping the ``sparsity`` fraction of lowest scores, within each row
    (``per_row``, as Wanda compares) or over the whole tensor."""
    check_tensor("scores", scores, ndim=2)
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    s = scores.detach().float()
    flat = s if per_row else s.reshape(1, -1)
    drop = int(flat.shape[1] * float(sparsity))
    mask = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        lowest = flat.argsort(dim=1, stable=True)[:, :drop]
        mask.scatter_(1, lowest, False)
    return mask.reshape(s.shape)


def _named_linears(modules) -> dict[str, nn.Linear]:
    if isinstance(modules, Mapping):
        named = dict(modules)
    elif isinstance(modules, nn.Module) and not isinstance(modules, nn.Linear):
        named = {n: m for n, m in modules.named_modules() if isinstance(m, nn.Linear)}
    else:
        mods = [modules] if isinstance(modules, nn.Module) else list(modules)
        named = {str(i): m for i, m in enumerate(mods)}
    for name, m in named.items():
        if not isinstance(m, nn.Linear):
            raise TypeError(f"modules[{name!r}] must be an nn.Linear, got {type(m).__name__}")
    if not named:
        raise ValueError("modules holds no nn.Linear")
    return named


class ActivationNorms:
    """Collects the per-input-channel L2 norm of the inputs of a set of nn.Linear modules over
    calibration batches (for Wanda). ``modules``: a model (all its nn.Linear), a dict name ->
    Linear, or an iterable of Linears (named "0", "1", ...).

        with ActivationNorms(model) as calib:
            for batch in batches:
                model(**batch)
        norms = calib.norms()  # {name: [in_features] float32}
    """

    def __init__(self, modules: nn.Module | Mapping[str, nn.Linear] | Iterable[nn.Linear]):
        self.modules = _named_linears(modules)
        self.sum_sq = {
            n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in self.modules.items()
        }
        self.tokens = dict.fromkeys(self.modules, 0)
        self._handles = []

    def _hook(self, name):
        def hook(module, args):
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1]).double()
            self.sum_sq[name] += (x2 * x2).sum(dim=0).cpu()
            self.tokens[name] += x2.shape[0]

        return hook

    def __enter__(self):
        self._handles = [
            m.register_forward_pre_hook(self._hook(n)) for n, m in self.modules.items()
        ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def norms(self) -> dict[str, torch.Tensor]:
        """{name: per-input-channel L2 norm over every token seen}, float32."""
        missing = [n for n, t in self.tokens.items() if t == 0]
        if missing:
            raise RuntimeError(f"no calibration input reached module(s) {missing}")
        return {n: s.sqrt().float() for n, s in self.sum_sq.items()}


class TaylorScores:
    """Accumulates ``|W * dL/dW|`` of each module's weight over backward passes (gradient hooks;
    the .grad field is not touched or needed). Same ``modules`` forms as :class:`ActivationNorms`.

        with TaylorScores(model) as taylor:
            for batch in batches:
                loss_fn(model(batch)).backward()
        scores = taylor.scores()  # {name: [out, in] float32}
    """

    def __init__(self, modules: nn.Module | Mapping[str, nn.Linear] | Iterable[nn.Linear]):
        self.modules = _named_linears(modules)
        self.acc = {
            n: torch.zeros(m.weight.shape, dtype=torch.float32) for n, m in self.modules.items()
        }
        self.batches = dict.fromkeys(self.modules, 0)
        self._handles = []

    def _hook(self, name, weight):
        def hook(grad):
            self.acc[name] += taylor_scores(weight, grad).cpu()
            self.batches[name] += 1

        return hook

    def __enter__(self):
        for n, m in self.modules.items():
            if not m.weight.requires_grad:
                raise ValueError(f"modules[{n!r}].weight does not require grad")
            self._handles.append(m.weight.register_hook(self._hook(n, m.weight)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def scores(self) -> dict[str, torch.Tensor]:
        missing = [n for n, b in self.batches.items() if b == 0]
        if missing:
            raise RuntimeError(f"no gradient reached module(s) {missing}")
        return dict(self.acc)
