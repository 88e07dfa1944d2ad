"""Int8 replacements for ``nn.Linear``: W8A8 (:class:`Int8Linear`), weight-only
(:class:`Int8WeightOnlyLinear`) and quantisation-aware training (:class:`Int8LinearQAT`).

Conversions (all keep the layer's shape and bias; weights are quantised symmetrically per output
channel with ``llmkern.ops.int8.quantize_weight``)::

    Int8Linear.from_float(linear)                    # W8A8, dynamic per-token activations
    Int8Linear.from_float(linear, input_scale=s)     # W8A8, static calibrated activation scale
    Int8WeightOnlyLinear.from_float(linear)          # int8 weights, float activations
    Int8WeightOnlyLinear.from_float(linear, group_size=128)
    Int8LinearQAT.from_float(linear)  ... train ...  .to_int8()   # -> Int8Linear, same outputs
    module.to_float()                                # -> nn.Linear with the dequantised weight

State: the canonical int8 weight ``qweight`` [N, K], ``weight_scale`` and ``bias`` (float32) and,
when calibrated, ``input_scale`` are persistent buffers, so ``state_dict`` round-trips exactly.
On CPU the weight is also kept pre-packed for the C++ kernels in a non-persistent buffer, rebuilt
after ``load_state_dict`` and on every device move (call ``repack()`` after editing ``qweight`` or
``weight_scale`` in place). Inputs may be float32, bfloat16 or float16
with any leading dimensions; the output has the input's dtype. Scales and bias stay float32
whatever ``module.to(dtype)`` / ``.half()`` / ``.double()`` asks. Modules pickle
(``torch.save(model)``); ``torch.jit.script`` raises a TypeError (use torch.compile). On the
meta device, ``from_float`` builds a module with meta buffers (shapes only).

Autograd: the inference modules are differentiable in their input (so a quantised student can
sit inside a model that is trained, e.g. distilled): the backward is that of the float layer with
the dequantised weight, ``dx = g @ W``, exact for :class:`Int8WeightOnlyLinear` and the
straight-through estimator of the activation rounding for :class:`Int8Linear`. The int8 weight,
its scales and the bias are frozen buffers and get no gradient; train with
:class:`Int8LinearQAT`.

Expected error against the float layer (Gaussian weights and activations, K in the hundreds to
thousands): round-to-nearest with step ``absmax / 127`` adds noise of relative RMS
``absmax / (127 * sqrt(12) * sigma)``, about 0.7-0.8% for the absmax of a Gaussian row (3-3.6
sigma) for each of weight and activation, so the output's relative Frobenius error is about 1.1%
for :class:`Int8Linear` and 0.8% for :class:`Int8WeightOnlyLinear` (tests/test_int8_nn.py).

Execution: the forward is one call of the op ``w8a8_linear`` (quantisation, dynamic or static,
then the W8A8 GEMM) or ``w8_linear`` through ``llmkern.backends.run``: the backend's kernel for
the input's device, without the per-call value checks of the public functions (the module checks
its scales when they are set or loaded; on the GPU the checks would synchronise). The weight
form the selected backend reads (the CPU kernels' packed layout) is prepared once by
``llmkern.backends.prepare`` and held in a non-persistent buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkern import backends
from llmkern.nn._base import NoTorchScript, needs_input_grad, straight_through
from llmkern.ops import int8 as ops
from llmkern.ops._checks import FLOAT_DTYPES, check_finite

__all__ = ["Int8Linear", "Int8WeightOnlyLinear", "Int8LinearQAT"]


def _check_input(x, in_features: int, device: torch.device) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.device != device:
        raise ValueError(f"input is on {x.device} but the layer's weights are on {device}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be float32/bfloat16/float16, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"input must have shape [..., {in_features}], got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"input must not be empty, got shape {tuple(x.shape)}")


def _check_linear(linear) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"from_float expects an nn.Linear, got {type(linear).__name__}")


def keep_float32(module: nn.Module, fn, names) -> None:
    """``module._apply(fn)`` that leaves the float32 tensors ``names`` (buffers or parameters)
    float32: a dtype cast of the module (``.half()``, ``.double()``, ``.to(dtype)``) moves them
    to the new device only. Scales and biases of the int8 layers are float32 by contract."""
    old = {n: getattr(module, n) for n in names if getattr(module, n, None) is not None}
    old = {n: t.data for n, t in old.items() if t.dtype == torch.float32}
    nn.Module._apply(module, fn)
    for n, t in old.items():
        new = getattr(module, n)
        if new.dtype == torch.float32:
            continue
        if isinstance(new, nn.Parameter):
            new.data = t.to(new.device)
        else:
            module._buffers[n] = t.to(new.device)


class _QuantizedLinearBase(NoTorchScript, nn.Module):
    """Buffers and conversions shared by the two inference modules."""

    def __init__(self, in_features: int, out_features: int, bias: bool, scale_shape, device):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"in_features and out_features must be > 0, got {in_features}, {out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        kw = {"device": device}
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=torch.int8, **kw)
        )
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32, **kw))
        self.register_buffer("bias", torch.zeros(out_features, **kw) if bias else None)
        self.register_buffer("_packed", None, persistent=False)

    def _set_weight(self, qweight, weight_scale, bias) -> None:
        self.qweight.copy_(qweight)
        self.weight_scale.copy_(weight_scale)
        if bias is not None:
            self.bias.copy_(bias.detach().float())
        self.repack()

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised float32 weight [N, K] (computed on each access; for inspection)."""
        return ops.dequantize_weight(
            self.qweight, self.weight_scale, getattr(self, "group_size", 0)
        )

    def to_float(self) -> nn.Linear:
        """An ``nn.Linear`` (float32) holding the dequantised weight and the bias."""
        linear = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, device=self.qweight.device
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def _prepare(self):  # the backend's form of the current weight (backends.prepare)
        raise NotImplementedError

    def repack(self) -> None:
        """Rebuild the backend's prepared (packed) copy of the weight: call it after changing
        ``qweight`` or ``weight_scale`` in place (loading and device moves do it themselves)."""
        if self.weight_scale.device.type != "meta":
            check_finite("weight_scale", self.weight_scale)
        self._packed = self._prepare()

    def _apply(self, fn, recurse=True):
        # Scales and bias stay float32; the packed copy follows the weight (CPU only).
        keep_float32(self, fn, [k for k, v in self._buffers.items() if v is not None])
        self.repack()
        return self

    def _forward(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features, self.qweight.device)
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if needs_input_grad(x2, self.bias):
            out = straight_through(self._forward, x2, self.bias, lambda: self.weight)
        else:
            out = self._forward(x2)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.repack()


class Int8Linear(_QuantizedLinearBase):
    """W8A8 linear layer: int8 weight with per-output-channel scales, activations quantised to
    int8 on the fly per token (or with a calibrated static per-tensor ``input_scale``), int32
    accumulation and the dequantisation, bias and output cast fused in the GEMM epilogue."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        input_scale: float | torch.Tensor | None = None,
    ):
        super().__init__(in_features, out_features, bias, (out_features,), device)
        self.register_buffer("input_scale", None)
        self.set_input_scale(input_scale)
        self.repack()

    @classmethod
    def from_float(cls, linear: nn.Linear, input_scale: float | torch.Tensor | None = None):
        """Quantise ``linear`` (weight per output channel). ``input_scale``: a calibrated
        per-tensor activation scale (e.g. ``absmax / 127`` of calibration inputs) for static
        quantisation; None (default) quantises each token dynamically."""
        _check_linear(linear)
        w = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, w.device)
        module.set_input_scale(input_scale)
        module._set_weight(*ops.quantize_weight(w), linear.bias)
        return module

    def set_input_scale(self, scale: float | torch.Tensor | None) -> None:
        """Use a static per-tensor activation scale (> 0), or dynamic per-token with None."""
        if scale is None:
            self.input_scale = None
            return
        value = float(scale)
        if not (value > 0 and value < float("inf")):
            raise ValueError(f"input_scale must be finite and > 0, got {value}")
        self.input_scale = torch.tensor(value, dtype=torch.float32, device=self.qweight.device)

    def _prepare(self):
        return backends.prepare("w8a8_linear", self.qweight.device, self.qweight)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint decides static vs dynamic activations: make room for its input_scale.
        if prefix + "input_scale" in state_dict:
            self.input_scale = torch.ones((), device=self.qweight.device)
        else:
            self.input_scale = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _forward(self, x2: torch.Tensor) -> torch.Tensor:
        return ops.run_w8a8_linear(
            x2, self.qweight, self.weight_scale, self.bias, self.input_scale, self._packed
        )

    def extra_repr(self) -> str:
        acts = "dynamic per-token" if self.input_scale is None else "static per-tensor"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, activations={acts}"
        )


class Int8WeightOnlyLinear(_QuantizedLinearBase):
    """Weight-only int8 linear layer: int8 weight with per-output-channel (``group_size=0``) or
    per-group-along-K scales, float activations, dequantised inside the GEMM. The fast choice for
    memory-bound small batches (decoding)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        group_size: int = 0,
        device=None,
    ):
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
            raise ValueError(
                f"group_size must be an int >= 0 (0 = per channel), got {group_size!r}"
            )
        shape = (
            (out_features,) if group_size == 0 else (out_features, -(-in_features // group_size))
        )
        super().__init__(in_features, out_features, bias, shape, device)
        self.group_size = group_size
        self.repack()

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 0):
        """Quantise ``linear``: one scale per output channel, or per ``group_size`` inputs."""
        _check_linear(linear)
        w = linear.weight.detach()
        module = cls(
            linear.in_features, linear.out_features, linear.bias is not None, group_size, w.device
        )
        module._set_weight(*ops.quantize_weight(w, group_size), linear.bias)
        return module

    def _prepare(self):
        args = (self.qweight, self.weight_scale, self.group_size)
        return backends.prepare("w8_linear", self.qweight.device, *args)

    def _forward(self, x2: torch.Tensor) -> torch.Tensor:
        return ops.run_w8_linear(
            x2, self.qweight, self.weight_scale, self.bias, self.group_size, self._packed
        )

    def extra_repr(self) -> str:
        scales = "per-channel" if self.group_size == 0 else f"group_size={self.group_size}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight=int8 {scales}"
        )


def _fake_quant(x: torch.Tensor, quantized: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 dequantised value in the forward, identity gradient (straight-through estimator)."""
    xf = x.float()
    return xf + (quantized.float() * scale - xf).detach()


class Int8LinearQAT(NoTorchScript, nn.Linear):
    """Quantisation-aware training for :class:`Int8Linear`: a float ``nn.Linear`` (float master
    weight and bias, trained as usual) whose forward sees the weight and the activations exactly
    as Int8Linear quantises them (per-channel weights, dynamic per-token activations), with
    straight-through gradients for both. :meth:`to_int8` gives the inference module, whose outputs
    equal this module's up to float rounding of the GEMM (Int8Linear sums exactly in int32)."""

    @classmethod
    def from_float(cls, linear: nn.Linear):
        """A QAT module starting from ``linear``'s weight and bias (copied)."""
        _check_linear(linear)
        w = linear.weight
        module = cls(
            linear.in_features, linear.out_features, linear.bias is not None, w.device, w.dtype
        )
        with torch.no_grad():
            module.weight.copy_(w)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features, self.weight.device)
        x2 = x.reshape(-1, self.in_features)
        x_q, x_scale = ops.quantize_per_token_ref(x2.detach())
        w_q, w_scale = ops.quantize_weight(self.weight.detach())
        bias = None if self.bias is None else self.bias.float()
        out = F.linear(
            _fake_quant(x2, x_q, x_scale[:, None]),
            _fake_quant(self.weight, w_q, w_scale[:, None]),
            bias,
        )
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def to_int8(self) -> Int8Linear:
        """The inference module with this module's current quantised weight."""
        return Int8Linear.from_float(self)

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the float master weight."""
        linear = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, self.weight.device
        )
        linear.load_state_dict(self.state_dict())
        return linear
