"""All-or-nothing compression: what every entry point (quantize, prune, low_rank, prepare_qat,
convert, and any new one) uses so that a call that fails leaves the model exactly as it was.

The rule for an entry point: check every argument and read the calibration data
(:func:`llmkern.compress.calibration.calibration_batches`) first, find its target layers with
:func:`require_targets` (an error rather than a silent no-op when there are none, e.g. when the
model is compressed already), then make every change inside ``with Transaction(model) as txn``:
module swaps through ``txn.swap`` and in-place tensor edits after ``txn.save(tensor)``. If the
block raises, the saved tensors get their values back and the swapped modules are put back,
last change first; the exception propagates.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn


class Transaction:
    """Records module swaps and in-place tensor edits on ``model``; undoes them if the ``with``
    block raises. Memory: one copy of each saved tensor (nothing for swaps)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._slots: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, original)
        self._swapped: set[tuple[int, str]] = set()
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def swap(self, name: str, new: nn.Module) -> None:
        """Replace the submodule ``name`` (dotted path) by ``new``."""
        parent_name, _, attr = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        key = (id(parent), attr)
        if key not in self._swapped:
            self._swapped.add(key)
            self._slots.append((parent, attr, getattr(parent, attr)))
        setattr(parent, attr, new)

    def save(self, *tensors: torch.Tensor) -> None:
        """Keep a copy of each tensor's values (once) before it is changed in place."""
        for t in tensors:
            if t is not None and id(t) not in self._saved:
                self._saved[id(t)] = (t, t.detach().clone())

    def save_module(self, module: nn.Module) -> None:
        """Save every parameter and buffer of ``module`` (e.g. before user code trains it)."""
        self.save(*module.parameters(), *(b for b in module.buffers() if b is not None))

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            with torch.no_grad():
                for t, copy in reversed(self._saved.values()):
                    t.copy_(copy)
            for parent, attr, original in reversed(self._slots):
                setattr(parent, attr, original)
        self._slots.clear()
        self._saved.clear()
        return False


def _compressed_modules(model: nn.Module) -> Counter:
    from llmkern.compress.checkpoint import swapped_modules

    return Counter(type(m).__name__ for m in swapped_modules(model).values())


def require_targets(op: str, model: nn.Module, targets: list, hint: str = "") -> None:
    """A ValueError when ``op`` finds no layer to change: say why (the model is compressed
    already, or every linear layer is skipped) instead of returning an empty report."""
    if targets:
        return
    held = _compressed_modules(model)
    if held:
        listing = ", ".join(f"{n} x{c}" for n, c in sorted(held.items()))
        raise ValueError(
            f"{op}: the model has no float linear layer to change; it holds llmkern modules "
            f"already ({listing}). {hint}".rstrip()
        )
    raise ValueError(
        f"{op}: the model has no linear layer to change (nn.Linear or Conv1D, minus `skip`; "
        "the LM head is skipped by default)"
    )
