"""What a compression entry point did, per layer, with parameters and bytes before and after.

"params" counts stored values (weights, biases, scales); 2:4 position metadata and other uint8/bool
bookkeeping count only in bytes. Bytes are those of the module's state dict, each shared tensor
counted once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

_BOOKKEEPING = (torch.uint8, torch.bool)


def _tensors(value):
    """Tensors in a state-dict value (torch's packed quantized params are tuples of tensors)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def _unique_tensors(module: nn.Module) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in (t for v in module.state_dict(keep_vars=True).values() for t in _tensors(v)):
        key = (t.data_ptr(), t.dtype, tuple(t.shape)) if t.numel() else id(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def count_params(module: nn.Module) -> int:
    return sum(t.numel() for t in _unique_tensors(module) if t.dtype not in _BOOKKEEPING)


def count_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _unique_tensors(module))


@dataclass
class LayerRow:
    name: str
    before: str  # module class before
    after: str  # module class after (same when untouched)
    action: str  # what was done, in words
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int


@dataclass
class Report:
    """Returned by every compression entry point; ``print(report)`` shows the per-layer table."""

    method: str
    layers: list[LayerRow] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    notes: dict = field(default_factory=dict)

    def add(self, name: str, before: nn.Module, after: nn.Module, action: str) -> None:
        self.layers.append(
            LayerRow(name, type(before).__name__, type(after).__name__, action,
                     count_params(before), count_params(after), count_bytes(before), count_bytes(after))
        )  # fmt: skip

    def start(self, model: nn.Module) -> Report:
        self.model_params_before, self.model_bytes_before = count_params(model), count_bytes(model)
        return self

    def finish(self, model: nn.Module) -> Report:
        self.model_params_after, self.model_bytes_after = count_params(model), count_bytes(model)
        return self

    def as_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=1)

    def __str__(self) -> str:
        head = ["layer", "module", "action", "params", "KB"]
        body = [
            [r.name, f"{r.before} -> {r.after}", r.action,
             f"{r.params_before:,} -> {r.params_after:,}",
             f"{r.bytes_before / 1024:,.1f} -> {r.bytes_after / 1024:,.1f}"]
            for r in self.layers
        ]  # fmt: skip
        widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(
            c.ljust(w) for c, w in zip(cells, widths, strict=True)
        ).rstrip()
        lines = [f"llmkern {self.method}: {len(self.layers)} layer(s)", fmt(head)]
        lines += [fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
        mb = lambda b: b / 2**20
        lines.append(
            f"model: {self.model_params_before:,} -> {self.model_params_after:,} params, "
            f"{mb(self.model_bytes_before):.2f} -> {mb(self.model_bytes_after):.2f} MB"
        )
        return "\n".join(lines)
