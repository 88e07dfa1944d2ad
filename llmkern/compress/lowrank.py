"""low_rank(): factorise linear layers by truncated SVD, W [out, in] ~= (U_r S_r) (V_r^T), into a
``LowRankLinear`` (two smaller linears, in -> rank -> out). A layer is factorised only when that
stores fewer values than the dense weight, i.e. ``rank * (in + out) < in * out``.
"""

from __future__ import annotations

import torch
from torch import nn

from llmkern.compress.modules import as_linear, linear_layers
from llmkern.compress.report import Report
from llmkern.compress.transaction import Transaction, require_targets
from llmkern.nn._base import NoTorchScript
from llmkern.ops._checks import check_float_scalar


class LowRankLinear(NoTorchScript, nn.Module):
    """``y = up(down(x))``: ``down`` [rank, in] without bias, ``up`` [out, rank] with the bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):  # fmt: skip
        super().__init__()
        if not 0 < rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def bias(self):
        return self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.down.weight
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"input must have shape [..., {self.in_features}], got {tuple(x.shape)}"
            )
        if x.device != w.device or x.dtype != w.dtype:
            raise TypeError(
                f"input is {x.dtype} on {x.device}, the layer {w.dtype} on {w.device}: "
                "convert one of them (.to())"
            )
        return self.up(self.down(x))

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, rank: int, svd=None) -> LowRankLinear:
        """Factorise ``linear`` to ``rank``; ``svd``: its (U, S, Vh) when already computed."""
        w = linear.weight
        u, s, vh = (
            svd if svd is not None else torch.linalg.svd(w.detach().float(), full_matrices=False)
        )
        m = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                device=w.device, dtype=w.dtype)  # fmt: skip
        root = s[:rank].sqrt()  # split the singular values evenly between the two factors
        m.up.weight.copy_(u[:, :rank] * root)
        m.down.weight.copy_(root[:, None] * vh[:rank])
        if linear.bias is not None:
            m.up.bias.copy_(linear.bias)
        return m

    def to_float(self) -> nn.Linear:
        w = self.up.weight @ self.down.weight
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep ``energy`` of the squared Frobenius norm."""
    e = singular_values.double().square()
    cum = torch.cumsum(e, 0) / e.sum().clamp(min=1e-300)
    return int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12)) + 1


ENERGY = 0.9  # low_rank's default


def low_rank(
    model: nn.Module,
    rank: int | None = None,
    energy: float | None = ENERGY,
    skip: list[str] | None = None,
) -> Report:
    """Factorise each linear layer (in place) to ``rank``, or to the smallest rank keeping
    ``energy`` of its squared singular values when ``rank`` is None (another ``energy`` with
    ``rank`` is a ValueError). Returns a :class:`Report`;
    layers where the factors would not be smaller stay dense. All or nothing, like
    :func:`llmkern.quantize`; the factors of a LowRankLinear are linear layers too, so low_rank
    after low_rank factorises them again, and quantize/prune after low_rank compress them."""
    if rank is None and energy is None:
        raise ValueError("give rank or energy")
    if rank is not None and energy not in (None, ENERGY):
        raise ValueError(f"energy={energy!r} applies when rank is None; rank={rank} fixes the rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if rank is None:
        check_float_scalar("energy", energy, low=0.0, high=1.0, low_open=True)
    layers = linear_layers(model, skip)
    require_targets("low_rank", model, layers, "Factorise a float model.")
    report = Report("low_rank" + (f" rank={rank}" if rank is not None else f" energy={energy}"))
    report.start(model)
    with Transaction(model) as txn:
        for name, m in layers:
            lin = as_linear(m)
            n_out, n_in = lin.weight.shape
            svd = torch.linalg.svd(lin.weight.detach().float(), full_matrices=False)
            r = rank_for_energy(svd[1], energy) if rank is None else min(rank, n_in, n_out)
            if r * (n_in + n_out) >= n_in * n_out:
                report.add(name, m, m, f"kept dense (rank {r} would not save memory)")
                continue
            new = LowRankLinear.from_float(lin, r, svd)
            txn.swap(name, new)
            report.add(name, m, new, f"SVD rank {r} of {min(n_in, n_out)}")
    return report.finish(model)
