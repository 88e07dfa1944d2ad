"""Finding and swapping the linear layers of a model.

A "linear layer" is an ``nn.Linear`` or a Hugging Face GPT-2 style ``Conv1D`` (``y = x @ W + b``
with ``W`` stored ``[in, out]``, the transpose of ``nn.Linear``). Conv1D layers are converted to
an equivalent ``nn.Linear`` before any compression, so every method sees one weight layout.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (matched by name so transformers stays optional)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def as_linear(module: nn.Module) -> nn.Linear:
    """The module itself when it is an ``nn.Linear``; a new, equivalent ``nn.Linear`` for a Conv1D."""
    if isinstance(module, nn.Linear):
        return module
    if not is_conv1d(module):
        raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")
    w = module.weight  # [in, out]
    lin = nn.Linear(
        w.shape[0], w.shape[1], bias=module.bias is not None, device=w.device, dtype=w.dtype
    )
    with torch.no_grad():
        lin.weight.copy_(w.T)
        if module.bias is not None:
            lin.bias.copy_(module.bias)
    lin.weight.requires_grad_(w.requires_grad)
    return lin


def matches(name: str, patterns: Iterable[str]) -> bool:
    """``name`` equals a pattern, lies under it (``pattern.``) or matches it as a glob."""
    return any(
        name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns
    )


def output_head_names(model: nn.Module) -> list[str]:
    """Names of the model's output embedding (LM head), which compression skips by default: it is
    usually tied to the input embedding, so replacing it would untie and duplicate the weight."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return [n for n, m in model.named_modules() if head is not None and m is head]


def linear_layers(
    model: nn.Module, skip: Iterable[str] | None = None
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every nn.Linear / Conv1D not skipped. ``skip`` holds module names or
    glob patterns (``"*.output.dense"``); ``None`` skips the LM head only."""
    patterns = list(output_head_names(model) if skip is None else skip)
    return [
        (n, m)
        for n, m in model.named_modules()
        if n and (type(m) is nn.Linear or is_conv1d(m)) and not matches(n, patterns)
    ]


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
