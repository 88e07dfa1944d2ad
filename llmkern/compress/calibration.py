"""Calibration: run a few batches through the model and record, per linear layer, statistics of
its input activations (what SmoothQuant, static activation scales and Wanda need).

A batch is a dict (called as ``model(**batch)``), a tuple/list (``model(*batch)``) or a tensor
(``model(batch)``); tensors are moved to the model's device.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def _check_batches(data) -> None:
    if data is None or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"calibration must be an iterable of batches (a DataLoader or a list), got {type(data).__name__}"
        )


@torch.no_grad()
def collect_input_stats(
    model: nn.Module, names: list[str], data, max_batches: int | None = None
) -> dict[str, InputStats]:
    """Run ``data`` through ``model`` (eval mode) and return :class:`InputStats` per layer name."""
    _check_batches(data)
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
