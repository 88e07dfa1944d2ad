"""Layer-wise reconstruction after pruning: re-fit the weights a mask keeps so that each layer
reproduces, on calibration inputs, the output its unpruned weights gave.

For one layer with inputs X (tokens x K), unpruned weights W and a mask, row r's kept weights
w (indices S_r) solve the least-squares problem ``min ||X_S w - X W_r^T||^2``, i.e.
``H_SS w = (H W_r^T)_S`` with ``H = X^T X``, plus a small ridge ``lambda ||w - W_r,S||^2``
(lambda on H's diagonal on both sides, so a row that loses nothing comes back unchanged). This
is the objective of SparseGPT's weight update (Frantar & Alistarh, 2023), here solved exactly
per row for a mask chosen beforehand (e.g. by Wanda). Layers are taken in the order the model
runs them, and each layer's X comes from the model whose earlier layers are already pruned and
re-fitted, so later layers absorb part of the earlier layers' error.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkern.compress.calibration import call_model, check_batches

# Rows solved at once are capped so that the batched [rows, k, k] systems stay near this size.
_SOLVE_ELEMENTS = 1 << 26


class _Stop(Exception):
    """Raised from a hook to end a calibration forward once the inputs it needs are recorded."""


@torch.no_grad()
def refit_kept_weights(
    weight: torch.Tensor, gram: torch.Tensor, mask: torch.Tensor, damp: float = 0.01
) -> torch.Tensor:
    """Least-squares re-fit of ``weight`` [N, K] restricted to ``mask`` (True = keep) given the
    input Gram matrix ``gram`` = X^T X [K, K]. Returns the new weight (zero where masked), in
    ``weight``'s dtype. ``damp`` is the ridge towards ``weight``, relative to the mean of
    diag(gram)."""
    n, k = weight.shape
    if gram.shape != (k, k) or mask.shape != (n, k):
        raise ValueError(
            f"gram must be [{k}, {k}] and mask [{n}, {k}], got {tuple(gram.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    scale = float(gram.diagonal().mean())
    if not scale > 0 or not torch.isfinite(gram).all():  # no signal to fit: keep the masked weight
        return weight * mask
    h = gram.double() + damp * scale * torch.eye(k, dtype=torch.float64, device=gram.device)
    w = weight.double()
    target = w @ h  # row r: (H w_r)
    # Each row's kept columns first (stable order), padded to the widest row; padded slots get an
    # identity row and a zero right-hand side, so they solve to 0 and are dropped.
    kmax = int(mask.sum(1).max())
    if kmax == 0:
        return torch.zeros_like(weight)
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :kmax]
    valid = mask.gather(1, idx)
    out = torch.zeros_like(w)
    rows = max(1, _SOLVE_ELEMENTS // max(1, kmax * kmax))
    h32 = h.float()
    for r0 in range(0, n, rows):
        i, v = idx[r0 : r0 + rows], valid[r0 : r0 + rows]
        b = target[r0 : r0 + rows].gather(1, i) * v
        # float32 is twice as fast; a chunk whose matrix it cannot factor is redone in float64
        for hh in (h32, h):
            a = hh[i[:, :, None], i[:, None, :]]
            if not bool(v.all()):
                a.mul_(v[:, :, None] & v[:, None, :]).diagonal(dim1=1, dim2=2).add_(~v)
            chol, info = torch.linalg.cholesky_ex(a)
            if not bool(info.any()):
                break
        else:
            raise RuntimeError(
                "refit_kept_weights: the damped Gram matrix is not positive definite"
            )
        sol = torch.cholesky_solve(b[..., None].to(chol.dtype), chol).squeeze(-1).double()
        out[r0 : r0 + rows].scatter_(1, i, sol * v)
    return out.to(weight.dtype)


def _next_group_grams(model, pending: list[str], data, max_batches):
    """Run the calibration data once and return {name: X^T X} for the first pending layer to
    execute and for the pending layers that share its very input tensor (e.g. q, k and v)."""
    grams: dict[str, torch.Tensor] = {}
    state = {"x": None, "gram": None}

    def hook(name):
        def fn(module, args):
            x = args[0]
            if state["x"] is None:  # the group's first layer: one X^T X for the whole group
                x2 = x.detach().reshape(-1, x.shape[-1]).float()
                state["x"], state["gram"] = x, (x2.T @ x2).double()
            elif x is not state["x"]:
                raise _Stop
            grams[name] = state["gram"] + grams[name] if name in grams else state["gram"]

        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in pending]
    try:
        for b, batch in enumerate(data):
            if max_batches is not None and b >= max_batches:
                break
            state["x"] = state["gram"] = None
            try:
                call_model(model, batch)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return grams


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    targets: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    calibration,
    *,
    max_batches: int | None = None,
    damp: float = 0.01,
) -> None:
    """Re-fit, layer by layer in execution order, the weights of the linear layers named in
    ``targets`` (name -> the unpruned weight to reproduce) under ``masks`` (name -> keep mask),
    writing the result into each layer's ``weight``."""
    check_batches(calibration)
    data = list(calibration)
    pending = list(targets)
    was_training = model.training
    model.eval()
    try:
        while pending:
            grams = _next_group_grams(model, pending, data, max_batches)
            if not grams:
                raise ValueError(f"calibration never reached these layers: {pending[:5]}")
            for name, gram in grams.items():
                lin = model.get_submodule(name)
                lin.weight.copy_(refit_kept_weights(targets[name], gram, masks[name], damp))
                pending.remove(name)
    finally:
        model.train(was_training)
