"""Calibration: run a few batches through the model and record, per linear layer, statistics of
its input activations (what SmoothQuant, static activation scales and Wanda need).

A batch is a dict (called as ``model(**batch)``), a tuple/list (``model(*batch)``) or a tensor
(``model(batch)``); tensors are moved to the model's device. Calibration data is an iterable of
batches, read once into a list by :func:`calibration_batches` before a compression call changes
anything (so a generator works, and is not consumed twice); one batch alone is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from llmkern.compress.modules import model_device


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def call_model(model: nn.Module, batch):
    batch = to_device(batch, model_device(model))
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


@dataclass
class InputStats:
    """Statistics of one layer's input over every calibration token (rows of ``x.view(-1, K)``)."""

    absmax: torch.Tensor  # [K] max |x_j|
    sumsq: torch.Tensor  # [K] sum of x_j^2
    rows: int = 0

    @property
    def tensor_absmax(self) -> float:
        return float(self.absmax.max())

    @property
    def channel_norm(self) -> torch.Tensor:
        """||X_j||_2 over the calibration tokens (Wanda's activation factor)."""
        return self.sumsq.sqrt()


def check_batches(data, what: str = "calibration") -> None:
    """``data`` must be an iterable of batches. One batch given alone (a dict or a tensor, which
    are iterable too: over keys, over rows) is a TypeError, not batches made of its pieces."""
    if isinstance(data, (Mapping, torch.Tensor)):
        raise TypeError(
            f"{what} must be an iterable of batches, got one batch ({type(data).__name__}): "
            "pass a list of batches, e.g. [batch]"
        )
    if data is None or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{what} must be an iterable of batches (a DataLoader or a list), got {type(data).__name__}"
        )


def calibration_batches(data, max_batches: int | None = None) -> list:
    """The calibration batches as a list, read once (a generator or a DataLoader is consumed
    here, so every later pass sees the same batches), at most ``max_batches`` of them; every
    check happens before the caller changes anything. Each batch must be a dict, a tuple/list
    or a tensor."""
    check_batches(data)
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    batches = list(itertools.islice(data, max_batches))
    if not batches:
        raise ValueError("calibration data yielded no batch")
    for i, b in enumerate(batches):
        if not isinstance(b, (Mapping, list, tuple, torch.Tensor)):
            raise TypeError(
                f"calibration batch {i} must be a dict, a tuple/list or a tensor, got {type(b).__name__}"
            )
    return batches


@torch.no_grad()
def collect_input_stats(
    model: nn.Module, names: list[str], data, max_batches: int | None = None
) -> dict[str, InputStats]:
    """Run ``data`` through ``model`` (eval mode) and return :class:`InputStats` per layer name."""
    check_batches(data)
    stats: dict[str, InputStats] = {}

    def hook(name):
        def fn(_module, args):
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1])
            s = stats.get(name)
            if s is None:
                s = stats[name] = InputStats(
                    x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1], dtype=torch.float64)
                )
            torch.maximum(s.absmax, x.abs().amax(0), out=s.absmax)
            s.sumsq += x.double().square().sum(0)
            s.rows += x.shape[0]

        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for batch in data:
            if max_batches is not None and n_batches >= max_batches:
                break
            call_model(model, batch)
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("calibration data yielded no batch")
    missing = [n for n in names if n not in stats]
    if missing:
        raise ValueError(
            f"calibration never reached these layers: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    for s in stats.values():
        s.sumsq = s.sumsq.float()
    return stats
