"""quantize(): swap linear layers for llmkern's int8 modules, in place; QAT with prepare_qat/convert.

Methods: ``"w8a8"`` (int8 weights per output channel x int8 activations per token, or one static
per-tensor activation scale from calibration) and ``"w8"`` (int8 weights, float activations).
Optional SmoothQuant (``smoothquant=alpha``) migrates activation outliers into the weights first;
it needs ``calibration`` batches. Layers that are already 2:4 sparse (llmkern.nn.Sparse24Linear,
from :func:`llmkern.compress.prune`) get int8 values, giving 2:4 + int8. Every call is all or
nothing (llmkern.compress.transaction).
"""

from __future__ import annotations

from torch import nn

from llmkern.compress.calibration import calibration_batches, collect_input_stats
from llmkern.compress.modules import (
    as_linear,
    is_conv1d,
    linear_layers,
    matches,
    output_head_names,
)
from llmkern.compress.report import Report
from llmkern.compress.smoothquant import smooth
from llmkern.compress.transaction import Transaction, require_targets
from llmkern.ops._checks import check_float_scalar

METHODS = ("w8a8", "w8")
ACTIVATION_SCALES = ("dynamic", "static")


def _nn():
    import llmkern.nn as lnn

    return lnn


def _float_sparse(model, skip):
    """The float Sparse24Linear layers not skipped (``skip`` as in linear_layers)."""
    lnn = _nn()
    patterns = list(output_head_names(model) if skip is None else skip)
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, lnn.Sparse24Linear) and not m.int8 and not matches(n, patterns)
    }


def _check_sparse_options(sparse, calibration_use, group_size) -> None:
    """Sparse24Linear's int8 forms have per-channel weight scales and dynamic per-token
    activations, and its 2:4 weight is not smoothed: options that would not apply raise."""
    if not sparse:
        return
    names = ", ".join(list(sparse)[:3]) + (" ..." if len(sparse) > 3 else "")
    if group_size:
        raise ValueError(
            f"group_size={group_size} does not apply to the 2:4 sparse layers ({names}): their "
            "int8 weights have one scale per output channel; skip them or use group_size=0"
        )
    if calibration_use:
        raise ValueError(
            f"{calibration_use} does not apply to the 2:4 sparse layers ({names}), which "
            "quantise activations per token and cannot be smoothed; skip them or quantize "
            "before prune"
        )


def quantize(
    model: nn.Module,
    method: str = "w8a8",
    calibration=None,
    smoothquant: float | None = None,
    skip: list[str] | None = None,
    *,
    activation_scale: str = "dynamic",
    group_size: int = 0,
    max_batches: int | None = None,
) -> Report:
    """Quantise ``model``'s linear layers in place and return a :class:`Report`.

    ``skip``: module names or glob patterns left as they are (default: the LM head); it applies
    to the 2:4 sparse layers too. ``activation_scale``: ``"dynamic"`` (per token, at run time)
    or ``"static"`` (one per-tensor scale per layer from ``calibration``; W8A8 only).
    ``group_size``: W8 scales per group of ``group_size`` input channels (0: per output channel;
    W8 on dense layers only). ``calibration`` (and ``max_batches``, which limits it) is read only
    for ``smoothquant`` or static activation scales, and is refused otherwise; an option that
    does not apply to a target layer (2:4 sparse layers: group_size, smoothquant, static
    scales) is a ValueError naming it.

    All or nothing: arguments and calibration are checked first, and if anything fails the model
    is left exactly as it was. A model with no float linear layer (e.g. quantised already) is a
    ValueError; int8 layers are never quantised again.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if activation_scale not in ACTIVATION_SCALES:
        raise ValueError(
            f"activation_scale must be one of {ACTIVATION_SCALES}, got {activation_scale!r}"
        )
    if activation_scale == "static" and method != "w8a8":
        raise ValueError("activation_scale='static' applies to method='w8a8' only")
    if smoothquant is not None:
        check_float_scalar("smoothquant", smoothquant, low=0.0, high=1.0)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0 (0 = per channel), got {group_size!r}")
    if group_size and method != "w8":
        raise ValueError(
            f"group_size={group_size} applies to method='w8' only (W8A8 weights have one scale "
            "per output channel)"
        )
    needs_data = smoothquant is not None or activation_scale == "static"
    if needs_data and calibration is None:
        raise ValueError("smoothquant and activation_scale='static' need calibration batches")
    for name, value in (("calibration", calibration), ("max_batches", max_batches)):
        if value is not None and not needs_data:
            raise ValueError(
                f"{name} is read only with smoothquant or activation_scale='static'; "
                "quantize without them does not use it"
            )
    lnn = _nn()
    sparse = _float_sparse(model, skip)
    dense = linear_layers(model, skip)
    _check_sparse_options(
        sparse,
        "smoothquant" if smoothquant is not None
        else "activation_scale='static'" if activation_scale == "static" else "",
        group_size,
    )  # fmt: skip
    data = calibration_batches(calibration, max_batches) if needs_data else None
    require_targets(
        "quantize", model, dense + list(sparse.items()),
        "Quantise a float model once (for 2:4 + int8: prune, then quantize).",
    )  # fmt: skip
    report = Report(f"quantize {method}").start(model)
    names = [n for n, _ in dense]
    originals = dict(dense)

    with Transaction(model) as txn:
        for name, m in dense:  # one weight layout ([out, in]) from here on
            if is_conv1d(m):
                txn.swap(name, as_linear(m))
        stats = None
        if needs_data and names:
            stats = collect_input_stats(model, names, data)
            if smoothquant is not None:
                groups = smooth(model, stats, smoothquant, data[0], save=txn.save)
                report.notes["smoothquant"] = {
                    "alpha": smoothquant,
                    "smoothed": [
                        f"{g.producer} -> {', '.join(g.consumers)}" for g in groups if g.applied
                    ],
                    "not equivalent, skipped": [
                        f"{g.producer} -> {', '.join(g.consumers)}" for g in groups if not g.applied
                    ],
                }

        for name in names:
            lin = model.get_submodule(name)
            before = originals[name]
            if method == "w8":
                new = lnn.Int8WeightOnlyLinear.from_float(lin, group_size=group_size)
                action = "int8 weights" + (
                    f", groups of {group_size}" if group_size else ", per channel"
                )
            elif activation_scale == "static":
                new = lnn.Int8Linear.from_float(lin, input_scale=stats[name].tensor_absmax / 127.0)
                action = "int8 W8A8, static activation scale"
            else:
                new = lnn.Int8Linear.from_float(lin)
                action = "int8 W8A8, per-token activations"
            if stats is not None and smoothquant is not None:
                action += f", smoothquant {smoothquant}"
            txn.swap(name, new)
            report.add(name, before, new, action)

        for name, m in sparse.items():
            new = lnn.Sparse24Linear.from_weight(m.dense_weight(), m.bias, int8=method)
            txn.swap(name, new)
            report.add(name, m, new, f"2:4 values to int8 ({method})")
    return report.finish(model)


def prepare_qat(model: nn.Module, skip: list[str] | None = None) -> Report:
    """Swap linear layers for llmkern.nn.Int8LinearQAT (fake-quantised weights and activations
    with straight-through gradients) so the model can be fine-tuned for int8; then :func:`convert`.
    All or nothing, like :func:`quantize`."""
    lnn = _nn()
    targets = linear_layers(model, skip)
    require_targets("prepare_qat", model, targets, "prepare_qat takes a float model.")
    report = Report("prepare_qat").start(model)
    with Transaction(model) as txn:
        for name, m in targets:
            new = lnn.Int8LinearQAT.from_float(as_linear(m))
            txn.swap(name, new)
            report.add(name, m, new, "fake-quant int8 for training")
    return report.finish(model)


def convert(model: nn.Module) -> Report:
    """Turn every Int8LinearQAT (after QAT fine-tuning) into a real Int8Linear (all or nothing)."""
    lnn = _nn()
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, lnn.Int8LinearQAT)]
    if not targets:
        raise ValueError(
            "convert: the model has no Int8LinearQAT layer; call prepare_qat(model) first"
        )
    report = Report("convert").start(model)
    with Transaction(model) as txn:
        for name, m in targets:
            new = m.to_int8()
            txn.swap(name, new)
            report.add(name, m, new, "int8 W8A8 from QAT")
    return report.finish(model)
