"""Sparse24Linear: a drop-in nn.Linear whose weight is 2:4 sparse along in_features, stored in
the canonical compressed form (llmkern/ops/sparse24.py): ``values`` [out, K/2] and ``meta``
uint8 [out, ceil(K/8)], K = in_features rounded up to a multiple of 4 (x is zero-padded to match).

Weight forms (``int8``):
- ``None``: float values (fp32/bf16/fp16), x of the same dtype; ``values`` is a Parameter, so the
  layer trains with its mask fixed (gradients of the masked dense layer flow to x, the kept
  values and bias); :meth:`reprune` recomputes the mask between steps (iterative pruning);
- ``"w8"``: int8 values with a per-output-channel scale, float x (weight-only int8);
- ``"w8a8"``: int8 values, x quantised per token (the W8A8 contract of llmkern.ops.int8).

The int8 forms follow llmkern.nn.int8's rules: ``w_scale`` and ``bias`` stay float32 under
``.half()`` / ``.double()`` / ``.to(dtype)``; the int8 values and scales are frozen; x gets the
gradient of the float layer with the dequantised weight (exact for "w8", straight-through for the
activation rounding of "w8a8") and a trainable ``bias`` its gradient. Modules pickle;
``torch.jit.script`` raises a TypeError.

Execution: the forward is one op call through ``llmkern.backends.run`` (``sparse24_matmul``,
``sparse24_w8_matmul`` or ``sparse24_w8a8_linear``), handing the backend the layer's
:class:`~llmkern.backends.Prepared` forms of its weight. 2:4 pays off when reading the weight
dominates (small batch, decoding); where the dense GEMM wins, on CPU (x with more than
:attr:`max_sparse_rows` rows; -1, the default: the row counts measured per ISA family, form and
dtype, ``llmkern.cpu.sparse24.DENSE_ROWS``), the backend multiplies with a dense copy of
the weight, built on first use into those forms (not saved; it costs the dense weight's memory,
so set ``max_sparse_rows = None`` to never use it). On CUDA the prepared form is the weight in
the tensor cores' mma.sp layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkern.backends import Prepared
from llmkern.cpu.sparse24 import runs_dense
from llmkern.importance import importance_scores
from llmkern.nn._base import NoTorchScript, needs_input_grad, straight_through
from llmkern.nn.int8 import keep_float32
from llmkern.ops import int8 as int8_ops
from llmkern.ops import sparse24 as s24
from llmkern.ops._checks import FLOAT_DTYPES

INT8_FORMS = ("w8", "w8a8")


def _round4(k: int) -> int:
    return -(-k // 4) * 4


def _check_not_meta(weight: torch.Tensor) -> None:
    if weight.device.type == "meta":
        raise ValueError(
            "Sparse24Linear needs the weight's values to find and check its 2:4 pattern (a meta "
            "tensor has none); for shapes only: Sparse24Linear(in, out, device='meta')"
        )


def _validate_after_load(module: Sparse24Linear, _incompatible_keys) -> None:
    # A module-level function, not a lambda: the module must pickle. Loading copies in place,
    # which tensors made in inference mode do not count: drop the forms of the old weight.
    module._prepared.clear()
    module._validate()


class Sparse24Linear(NoTorchScript, nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        int8: str | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        if int8 is not None and int8 not in INT8_FORMS:
            raise ValueError(f"int8 must be None or one of {INT8_FORMS}, got {int8!r}")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in/out features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features, self.int8 = in_features, out_features, int8
        k = _round4(in_features)
        vdtype = torch.int8 if int8 else dtype
        values = torch.zeros(out_features, k // 2, dtype=vdtype, device=device)
        # Code 0b0100 (positions 0 and 1) in both nibbles: a valid all-zero weight.
        meta = torch.full((out_features, s24.meta_cols(k)), 0x44, dtype=torch.uint8, device=device)
        if int8:
            self.register_buffer("values", values)
            self.register_buffer("w_scale", torch.ones(out_features, device=device))
        else:
            self.values = nn.Parameter(values)
            self.w_scale = None
        self.register_buffer("meta", meta)
        bdtype = torch.float32 if int8 else dtype
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=bdtype, device=device)) if bias else None
        )
        self._prepared = Prepared(max_rows=-1)  # the backend's forms of the weight
        self.register_load_state_dict_post_hook(_validate_after_load)

    @property
    def max_sparse_rows(self) -> int | None:
        """Most rows of x multiplied by the 2:4 kernel on CPU; more go through a dense copy of
        the weight. -1 (default): the measured rule for the input's dtype
        (``llmkern.cpu.sparse24.DENSE_ROWS``); None: always 2:4."""
        return self._prepared.settings["max_rows"]

    @max_sparse_rows.setter
    def max_sparse_rows(self, rows: int | None) -> None:
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < -1):
            raise ValueError(f"max_sparse_rows must be None, -1 or an int >= 0, got {rows!r}")
        self._prepared.settings["max_rows"] = rows

    # -----------------------------------------------------------------------------------------
    # Construction and conversion
    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        importance: str | torch.Tensor = "magnitude",
        *,
        act_norm: torch.Tensor | None = None,
        grad: torch.Tensor | None = None,
        int8: str | None = None,
    ) -> Sparse24Linear:
        """Prune ``linear`` to 2:4 (keeping the 2 highest scores of every 4 weights along K) and
        compress it. ``importance``: a method of llmkern.importance (magnitude | l1 |
        wanda with ``act_norm`` | taylor with ``grad``) or a score tensor of the weight's shape.
        An already 2:4 weight keeps exactly its non-zeros with the default magnitude scores."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        _check_not_meta(linear.weight)
        w = linear.weight.detach()
        if isinstance(importance, torch.Tensor):
            if act_norm is not None or grad is not None:
                raise ValueError("act_norm and grad apply to a named importance method, not scores")
            scores = importance
            if tuple(scores.shape) != tuple(w.shape):
                raise ValueError(
                    f"importance scores must have shape {tuple(w.shape)}, got {tuple(scores.shape)}"
                )
        else:
            scores = importance_scores(w, importance, act_norm=act_norm, grad=grad)
        pad = _round4(w.shape[1]) - w.shape[1]
        mask = s24.nm_mask(F.pad(scores.float().to(w.device), (0, pad), value=-1.0), 2, 4)
        pruned = F.pad(w, (0, pad)) * mask.to(w.dtype)
        return cls.from_weight(pruned[:, : w.shape[1]], linear.bias, int8=int8)

    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, int8: str | None = None
    ) -> Sparse24Linear:
        """From a weight [out, in] that is already 2:4 along ``in`` (else a ValueError naming the
        first offending group); ``int8`` quantises the kept values per output channel."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        _check_not_meta(weight)
        weight = weight.detach()
        if weight.dim() != 2 or weight.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"weight must be a 2-D float tensor, got {weight.dtype} {tuple(weight.shape)}"
            )
        n, k_in = weight.shape
        mod = cls(k_in, n, bias is not None, int8=int8, dtype=weight.dtype, device=weight.device)
        w = F.pad(weight, (0, _round4(k_in) - k_in))
        if int8:
            w_q, scale = int8_ops.quantize_weight(w.float())
            values, meta = s24.compress_24(w_q)
            mod.w_scale.copy_(scale)
        else:
            values, meta = s24.compress_24(w)
        with torch.no_grad():
            mod.values.copy_(values)
            mod.meta.copy_(meta)
            if bias is not None:
                mod.bias.copy_(bias.detach())
        return mod

    def dense_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense [out, in] weight (dequantised for int8), detached."""
        return self._dense_padded(dtype)[:, : self.in_features]

    def _dense_padded(self, dtype: torch.dtype | None) -> torch.Tensor:
        w = s24.decompress_24(self.values.detach(), self.meta)
        if self.int8:
            w = w.float() * self.w_scale[:, None]
        return w.to(dtype or w.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dense view for inspection (a new tensor; edit through from_weight / reprune)."""
        return self.dense_weight()

    def to_float(self) -> nn.Linear:
        w = self.dense_weight()
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=w.device, dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias.detach())
        return lin

    @torch.no_grad()
    def reprune(self, scores: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Recompute the 2:4 mask from ``scores`` [out, in] over ``weight`` (default: the current
        weight; pass the dense weight to let pruned positions come back) and recompress in place
        (``values`` stays the same Parameter, so an optimizer keeps working)."""
        if self.int8:
            raise RuntimeError("reprune applies to float layers; reprune, then quantise")
        w = self.dense_weight() if weight is None else weight.detach().to(self.values.dtype)
        shape = (self.out_features, self.in_features)
        if tuple(w.shape) != shape or tuple(scores.shape) != shape:
            raise ValueError(f"weight and scores must have shape {shape}")
        pad = _round4(self.in_features) - self.in_features
        mask = s24.nm_mask(F.pad(scores.float(), (0, pad), value=-1.0), 2, 4)
        values, meta = s24.compress_24(F.pad(w, (0, pad)) * mask.to(w.dtype))
        self.values.copy_(values)
        self.meta.copy_(meta)
        self._prepared.clear()

    def _apply(self, fn, recurse=True):
        self._prepared.clear()  # forms of the weight on its old device or dtype
        if self.int8:  # scales and bias stay float32, as in llmkern.nn.int8
            keep_float32(self, fn, ("w_scale", "bias"))
            return self
        return super()._apply(fn, recurse)

    def _validate(self) -> None:
        k = _round4(self.in_features)
        dtypes = (torch.int8,) if self.int8 else FLOAT_DTYPES
        s24.check_compressed(self.values, self.meta, k, dtypes, validate_codes=True)

    def extra_repr(self) -> str:
        form = f"int8={self.int8}" if self.int8 else f"dtype={self.values.dtype}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {form}")  # fmt: skip

    # -----------------------------------------------------------------------------------------
    # Forward
    # -----------------------------------------------------------------------------------------

    def runs_dense(self, rows: int, dtype: torch.dtype) -> bool:
        """Whether ``rows`` rows of finite x of ``dtype`` take the dense path on CPU."""
        return runs_dense(rows, self.int8, dtype, self.max_sparse_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dim in_features={self.in_features}, "
                f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"x must be float32/bfloat16/float16, got {x.dtype}")
        if x.device != self.values.device:
            raise ValueError(
                f"input is on {x.device} but the layer's weights are on {self.values.device}"
            )
        if not self.int8 and x.dtype != self.values.dtype:
            raise TypeError(
                f"x has dtype {x.dtype} but the layer's weight is {self.values.dtype}; "
                "convert one of them (.to(dtype))"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        pad = _round4(self.in_features) - self.in_features
        if pad:
            x2 = F.pad(x2, (0, pad))
        if self.int8 and needs_input_grad(x2, self.bias):
            out = straight_through(
                self._matmul, x2, self.bias, lambda: self._dense_padded(torch.float32)
            )
        else:
            out = self._matmul(x2)
        return out.reshape(*lead, self.out_features)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8 == "w8a8":
            args = (x, self.values, self.meta, self.w_scale, self.bias)
            return s24.run_sparse24_w8a8_linear(*args, self._prepared)
        if self.int8 == "w8":
            args = (x, self.values, self.meta, self.w_scale, self.bias)
            return s24.run_sparse24_w8_matmul(*args, self._prepared)
        return s24.run_sparse24_matmul(x, self.values, self.meta, self.bias, self._prepared)
