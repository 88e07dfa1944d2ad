"""What every llmkern module shares: the TorchScript refusal and the straight-through backward of
the int8 inference layers."""

from __future__ import annotations

from collections.abc import Callable

import torch


class NoTorchScript:
    """Mixin: ``torch.jit.script`` of the module (or of a model holding it) raises a clear error.
    TorchScript cannot compile llmkern's custom ops and backend dispatch; torch.compile and
    torch.export can (the ops have fake implementations)."""

    def __prepare_scriptable__(self):
        raise TypeError(
            f"torch.jit.script does not support llmkern.{type(self).__name__}: use torch.compile "
            "or torch.export (llmkern's ops are torch.library custom ops with fake kernels)"
        )


def needs_input_grad(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or (bias is not None and bias.requires_grad)
    )


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, bias, run, weight):
        ctx.weight = weight
        ctx.dtypes = (x2.dtype, None if bias is None else bias.dtype)
        return run(x2)

    @staticmethod
    def backward(ctx, grad):
        g = grad.float()
        gx = (g @ ctx.weight()).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gb = g.sum(0).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return gx, gb, None, None


def straight_through(
    run: Callable[[torch.Tensor], torch.Tensor],
    x2: torch.Tensor,
    bias: torch.Tensor | None,
    weight: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """``run(x2)`` (an int8 layer's forward on x2 [M, K]) with the gradient of the float layer it
    approximates: ``d/dx2 = g @ weight()`` (``weight()``: the dequantised float32 weight [N, K],
    built only in the backward) and ``d/dbias = g.sum(0)``. For weight-only int8 this is the exact
    gradient; for W8A8 it is the straight-through estimator of the activation rounding (as in
    quantisation-aware training). The int8 weight and its scales get no gradient."""
    return _StraightThrough.apply(x2, bias, run, weight)
