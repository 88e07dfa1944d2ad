"""prune_structure(): remove whole FFN neurons, attention heads and layers, so that the model gets
genuinely smaller and faster with every kernel; then, optionally, recover by distillation from
the unpruned model.

Supported (Hugging Face transformers models; the task heads around them are kept):

- BERT-style post-LN encoders (``BertModel``: MiniLM, BERT): query/key/value rows and output
  columns per head; intermediate/output dense per neuron;
- GPT-2 (``GPT2Model``): Conv1D layers, the fused ``c_attn`` split into its q, k, v parts;
- Llama-style decoders (``LlamaModel``) with grouped-query attention: whole KV groups
  (``gqa="groups"``: each kv head with its query heads) or the same number of query heads in
  every group (``gqa="heads"``); gate/up rows and down columns per neuron.

Ratios are uniform across layers, so the pruned model is described by its config alone
(intermediate_size / n_inner, num_attention_heads, num_key_value_heads and head_dim,
num_hidden_layers). For Llama every pruned model is a plain Hugging Face model again. BERT and
GPT-2 derive the head size from hidden_size / num_attention_heads, which cannot describe fewer
heads of the original size: after head pruning their config records the layout under
``llmkern_heads`` and :func:`llmkern.load` rebuilds it (transformers' own ``from_pretrained``
then reports a shape mismatch); FFN and layer pruning keep them plain.

Importance (higher = keep), computed on the current model at each step:

- ``activation`` (Minitron): neuron = mean |activation| entering the down projection over the
  calibration tokens; head = mean L2 norm of the head's attention output (the o-projection's
  input slice); KV group = sum of its query heads; layer = Block Importance,
  ``1 - mean cos(layer input, layer output)`` over tokens;
- ``l1``: the sum of |w| of the unit's weights (rows of up/gate/q/k/v, columns of down/o);
- ``taylor``: the same sum of ``|w * dL/dw|`` accumulated over calibration batches (the model must
  return a loss, e.g. a causal LM with labels);
- ``random``: a control (seeded).

Everything (arguments, model family, shapes, calibration and scores) is checked and computed
before the model is changed; the new layers are built aside and swapped in at the end, so a
failure leaves the model as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llmkern.compress.calibration import calibration_batches, call_model
from llmkern.compress.distill import ALPHA, LR, TEMPERATURE, check_loss_options
from llmkern.compress.modules import is_conv1d
from llmkern.compress.report import LayerRow, Report, count_bytes, count_params

IMPORTANCES = ("activation", "l1", "taylor", "random")
GQA_MODES = ("groups", "heads")
FAMILIES = {"BertModel": "bert", "GPT2Model": "gpt2", "LlamaModel": "llama"}
SUPPORTED = "BERT-style encoders (BertModel), GPT-2 (GPT2Model) and Llama-style decoders (LlamaModel), with or without their task heads"  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Where the units live in each family


@dataclass
class _Attention:
    module: nn.Module  # holds the head-count attributes
    q: list  # [(linear, first output index)] the query rows live in
    k: list
    v: list
    o: nn.Module  # output projection: one input column block per query head
    n_heads: int
    n_kv: int
    head_dim: int


@dataclass
class _Ffn:
    up: list  # linears whose output rows are the neurons (up, gate / c_fc / intermediate)
    down: nn.Module  # the neurons are its input columns


def _backbone(model: nn.Module) -> tuple[nn.Module, str]:
    """(the transformers backbone inside ``model``, its family), or a clear TypeError."""
    base = getattr(model, "base_model", None)
    base = base if isinstance(base, nn.Module) else model
    family = FAMILIES.get(type(base).__name__)
    if family is None or not type(base).__module__.startswith("transformers."):
        raise TypeError(
            f"prune_structure does not support {type(model).__name__}"
            + (f" (backbone {type(base).__name__})" if base is not model else "")
            + f"; supported: {SUPPORTED}"
        )
    return base, family


def _layers(base, family) -> tuple[nn.Module, str]:
    """(parent, attribute) of the ModuleList of transformer blocks."""
    if family == "bert":
        return base.encoder, "layer"
    if family == "gpt2":
        return base, "h"
    return base, "layers"


def _attention(layer, family, config) -> _Attention:
    if family == "bert":
        s = layer.attention.self
        n, d = s.num_attention_heads, s.attention_head_size
        return _Attention(s, [(s.query, 0)], [(s.key, 0)], [(s.value, 0)],
                          layer.attention.output.dense, n, n, d)  # fmt: skip
    if family == "gpt2":
        a = layer.attn
        if getattr(a, "is_cross_attention", False) or hasattr(layer, "crossattention"):
            raise TypeError("prune_structure does not support GPT-2 with cross-attention")
        n, d = a.num_heads, a.head_dim
        e = a.split_size
        return _Attention(
            a, [(a.c_attn, 0)], [(a.c_attn, e)], [(a.c_attn, 2 * e)], a.c_proj, n, n, d
        )
    a = layer.self_attn
    d = a.head_dim
    nq = a.q_proj.out_features // d
    nkv = a.k_proj.out_features // d
    return _Attention(a, [(a.q_proj, 0)], [(a.k_proj, 0)], [(a.v_proj, 0)], a.o_proj, nq, nkv, d)


def _ffn(layer, family) -> _Ffn:
    if family == "bert":
        return _Ffn([layer.intermediate.dense], layer.output.dense)
    if family == "gpt2":
        return _Ffn([layer.mlp.c_fc], layer.mlp.c_proj)
    return _Ffn([layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj)


def _out_features(m) -> int:
    return m.nf if is_conv1d(m) else m.out_features


def _linear_weight(m) -> torch.Tensor:
    """The weight as [out, in] (Conv1D stores [in, out])."""
    return m.weight.T if is_conv1d(m) else m.weight


# ---------------------------------------------------------------------------------------------
# Slicing


def _slice(m: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None):
    """A new layer of ``m``'s class keeping output units ``rows`` and input units ``cols``
    (index tensors; None keeps all)."""
    w = _linear_weight(m).detach()
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    b = m.bias.detach() if m.bias is not None else None
    if b is not None and rows is not None:
        b = b.index_select(0, rows.to(b.device))
    if is_conv1d(m):
        new = copy.copy(m)  # transformers' Conv1D: same class, new parameters
        new._parameters = dict(m._parameters)
        new.weight = nn.Parameter(w.T.contiguous(), requires_grad=m.weight.requires_grad)
        new.nf = w.shape[0]
        if hasattr(new, "nx"):
            new.nx = w.shape[1]
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        new.weight = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.clone(), requires_grad=m.bias.requires_grad)
    return new


def _head_index(heads: list[int], head_dim: int, offset: int = 0) -> torch.Tensor:
    """Rows of the listed heads, each ``head_dim`` wide, after ``offset``."""
    return torch.tensor(
        [offset + h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long
    )


# ---------------------------------------------------------------------------------------------
# Importance


class _Activations:
    """Forward hooks summing activation importance over calibration batches: per key
    ("heads", "ffn", "layers") and layer, [sum, tokens]."""

    def __init__(self, blocks, attns, ffns, want):
        self.sums = {k: [None] * len(blocks) for k in ("heads", "ffn", "layers")}
        self.handles = []
        for i, (blk, a, f) in enumerate(zip(blocks, attns, ffns, strict=True)):
            if want[0]:
                self.handles.append(a.o.register_forward_pre_hook(self._head_hook(i, a)))
            if want[1]:
                self.handles.append(f.down.register_forward_pre_hook(self._ffn_hook(i)))
            if want[2]:
                self.handles.append(
                    blk.register_forward_hook(self._block_hook(i), with_kwargs=True)
                )

    def _add(self, key, i, value, tokens):
        s = self.sums[key]
        s[i] = [value, tokens] if s[i] is None else [s[i][0] + value, s[i][1] + tokens]

    def _head_hook(self, i, a):
        def hook(_m, args):
            x = args[0].detach().double().reshape(-1, a.n_heads, a.head_dim)
            self._add("heads", i, x.norm(dim=-1).sum(0), x.shape[0])

        return hook

    def _ffn_hook(self, i):
        def hook(_m, args):
            x = args[0].detach().double()
            x = x.reshape(-1, x.shape[-1])
            self._add("ffn", i, x.abs().sum(0), x.shape[0])

        return hook

    def _block_hook(self, i):
        def hook(_m, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, (tuple, list)) else out
            cos = nn.functional.cosine_similarity(x.detach().double(), y.detach().double(), dim=-1)
            self._add("layers", i, (1.0 - cos).sum(), cos.numel())

        return hook

    def close(self):
        for h in self.handles:
            h.remove()

    def means(self, want) -> dict:
        out = {}
        for key, wanted in zip(("heads", "ffn", "layers"), want, strict=True):
            if wanted:
                if any(s is None for s in self.sums[key]):
                    raise ValueError(f"the calibration batches never reached every layer ({key})")
                out[key] = [(s / n).float() for s, n in self.sums[key]]
        if "layers" in out:
            out["layers"] = [float(v) for v in out["layers"]]
        return out


@torch.no_grad()
def _activation_scores(model, blocks, attns, ffns, calibration, want):
    acts = _Activations(blocks, attns, ffns, want)
    was = model.training
    model.eval()
    n = 0
    try:
        for batch in calibration:
            call_model(model, batch)
            n += 1
    finally:
        acts.close()
        model.train(was)
    if n == 0:
        raise ValueError("calibration yielded no batch")
    return acts.means(want)


def _weight_scores(model, blocks, attns, ffns, importance, calibration):
    """Per-element scores [out, in] of every linear in the blocks: |w| or accumulated |w * g|."""
    linears = {id(m): m for a, f in zip(attns, ffns, strict=True)
               for m in [*(x for x, _ in a.q + a.k + a.v), a.o, *f.up, f.down]}  # fmt: skip
    if importance == "l1":
        return {k: _linear_weight(m).detach().float().abs() for k, m in linears.items()}
    from llmkern.compress.prune import _taylor_grads

    names = {id(m): n for n, m in model.named_modules() if id(m) in linears}
    grads = _taylor_grads(model, list(names.values()), calibration, None)
    out = {}
    for k, m in linears.items():
        g = grads[names[k]]
        g = g.T if is_conv1d(m) else g
        out[k] = (_linear_weight(m).detach().float() * g).abs()
    return out


def _unit_scores(model, blocks, attns, ffns, importance, calibration, want, seed):
    """{"heads": [per layer [n_heads]], "ffn": [per layer [n_neurons]], "layers": [float]}."""
    if importance == "activation":
        return _activation_scores(model, blocks, attns, ffns, calibration, want)
    if importance == "random":
        g = torch.Generator().manual_seed(seed)
        return {
            "heads": [torch.rand(a.n_heads, generator=g) for a in attns],
            "ffn": [torch.rand(_out_features(f.up[0]), generator=g) for f in ffns],
            "layers": [float(torch.rand((), generator=g)) for _ in blocks],
        }
    w = _weight_scores(model, blocks, attns, ffns, importance, calibration)

    def rows_per_head(parts, n, d):  # sum of the scores of each head's rows in (layer, offset)
        return sum(w[id(m)][off : off + n * d].reshape(n, d, -1).sum((1, 2)) for m, off in parts)

    out = {"heads": [], "kv": [], "ffn": [], "layers": []}
    for a, f in zip(attns, ffns, strict=True):
        o = w[id(a.o)]
        heads = o.reshape(o.shape[0], a.n_heads, a.head_dim).sum((0, 2))
        heads = heads + rows_per_head(a.q, a.n_heads, a.head_dim)
        kv = rows_per_head(a.k + a.v, a.n_kv, a.head_dim)
        if a.n_kv == a.n_heads:  # each head has its own k/v rows
            heads = heads + kv
        out["heads"].append(heads)
        out["kv"].append(kv)
        out["ffn"].append(sum(w[id(m)].sum(1) for m in f.up) + w[id(f.down)].sum(0))
        layer = {id(m) for m, _ in a.q + a.k + a.v} | {id(m) for m in (a.o, f.down, *f.up)}
        out["layers"].append(float(sum(w[k].sum() for k in layer)))
    return out


def _top(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, in their original order (ties: lower index)."""
    order = torch.argsort(-scores.double(), stable=True)[:keep]
    return sorted(order.tolist())


# ---------------------------------------------------------------------------------------------
# Recovery


@dataclass
class Recovery:
    """Distillation from the unpruned model after each pruning step (see :func:`prune_structure`).

    ``data``: a list of batches (repeated as needed). Budget: ``steps`` optimiser steps and/or
    ``max_seconds`` in all, split evenly over the steps of an iterative schedule. The loss: for a
    language model llmkern's KD loss on the logits at ``temperature`` (fused linear KD when the
    LM head is a plain linear) plus the hard labels weighted ``1 - alpha``; for an encoder the
    sentence-embedding recovery loss of ``llmkern compress`` (KD over in-batch similarities, the
    cosine of mean-pooled embeddings, and every kept layer's hidden states matched to the teacher
    layer it came from); or ``loss_fn(student, teacher, batch, layer_map)`` where
    ``layer_map[i]`` is the teacher layer that student layer ``i`` came from. The embeddings are
    frozen unless ``train_embeddings`` (they are not pruned; freezing them keeps most of a small
    model's parameters out of the optimiser), and dropout is off."""

    data: Sequence
    steps: int | None = None
    max_seconds: float | None = None
    lr: float = LR
    temperature: float = TEMPERATURE
    alpha: float = ALPHA
    loss_fn: Callable | None = None
    teacher: nn.Module | None = None
    train_embeddings: bool = False
    lr_decay: bool = True
    progress: bool = True

    def check(self, is_lm: bool) -> None:
        if isinstance(self.data, (str, bytes)) or not isinstance(self.data, Sequence):
            raise TypeError(
                f"recovery.data must be a list of batches, got {type(self.data).__name__}"
            )
        if len(self.data) == 0:
            raise ValueError("recovery.data holds no batch")
        if self.steps is None and self.max_seconds is None:
            raise ValueError("recovery needs a budget: steps and/or max_seconds")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"recovery.steps must be an int >= 1, got {self.steps!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"recovery.max_seconds must be > 0, got {self.max_seconds!r}")
        if not self.temperature > 0:
            raise ValueError(f"recovery.temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"recovery.alpha must be in [0, 1], got {self.alpha!r}")
        check_loss_options(self.loss_fn, self.temperature, self.alpha, "recovery.")
        if not is_lm and self.loss_fn is None:
            b = self.data[0]
            if not isinstance(b, dict) or "input_ids" not in b or "attention_mask" not in b:
                raise TypeError(
                    "recovery of an encoder needs batches that are dicts with input_ids and "
                    "attention_mask (or give recovery.loss_fn)"
                )


def _recover(rec: Recovery, teacher, model, layer_map, share: int, is_lm: bool):
    from llmkern.compress.distill import distill, no_dropout
    from llmkern.compress.embedding import recovery_loss

    if rec.loss_fn is not None:
        loss_fn = lambda s, t, b: rec.loss_fn(s, t, b, layer_map)  # noqa: E731
    elif is_lm:
        loss_fn = None
    else:
        loss_fn = recovery_loss("mean", layer_map=layer_map)
    frozen = []
    if not rec.train_embeddings:
        emb = model.get_input_embeddings()
        frozen = [p for p in emb.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with no_dropout(model):
            return distill(
                teacher, model, rec.data, temperature=rec.temperature, alpha=rec.alpha,
                steps=max(1, rec.steps // share) if rec.steps else None, lr=rec.lr,
                loss_fn=loss_fn, lr_decay=rec.lr_decay, progress=rec.progress,
                max_seconds=rec.max_seconds / share if rec.max_seconds else None,
            )  # fmt: skip
    finally:
        for p in frozen:
            p.requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# The entry point


def _check_ratio(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def _check_plain(attns, ffns):
    for i, (a, f) in enumerate(zip(attns, ffns, strict=True)):
        for m in [*(x for x, _ in a.q + a.k + a.v), a.o, *f.up, f.down]:
            if type(m) is not nn.Linear and not is_conv1d(m):
                raise TypeError(
                    f"layer {i} holds a {type(m).__name__}: prune_structure works on the float "
                    "model, before quantize / prune / low_rank"
                )


def _model_parts(base, family):
    parent, attr = _layers(base, family)
    blocks = list(getattr(parent, attr))
    attns = [_attention(b, family, base.config) for b in blocks]
    return parent, attr, blocks, attns, [_ffn(b, family) for b in blocks]


@dataclass
class _Targets:
    ffn: int  # neurons kept per layer
    kv: int  # kv heads kept per layer (= heads for multi-head attention)
    per_group: int  # query heads kept per kv group
    layers: int


def _targets(orig: dict, ffn, heads, layers, gqa, frac) -> _Targets:
    """What to keep after a step that has done the fraction ``frac`` of the whole pruning."""
    group = orig["heads"] // orig["kv"]
    if gqa == "groups" or group == 1:
        kv, per_group = orig["kv"] - int(orig["kv"] * heads * frac), group
    else:
        kv, per_group = orig["kv"], group - int(group * heads * frac)
    return _Targets(orig["ffn"] - int(orig["ffn"] * ffn * frac), kv, per_group,
                    orig["layers"] - round(layers * frac))  # fmt: skip


def _choose_heads(a: _Attention, head_scores, kv_scores, t: _Targets):
    """(kept query heads, kept kv heads). Query head h reads kv head h // (n_heads / n_kv)."""
    group = a.n_heads // a.n_kv
    if group == 1:
        kept = _top(head_scores, t.kv)
        return kept, kept
    if t.kv < a.n_kv:
        g = head_scores.reshape(a.n_kv, group).sum(1)
        if kv_scores is not None:
            g = g + kv_scores
        kv = _top(g, t.kv)
        return [k * group + j for k in kv for j in range(group)], kv
    q = [k * group + j for k in range(a.n_kv)
         for j in _top(head_scores[k * group : (k + 1) * group], t.per_group)]  # fmt: skip
    return q, list(range(a.n_kv))


def _plan_heads(a: _Attention, family, q_heads, kv_heads, swaps, attrs):
    """New q/k/v/o layers keeping the listed heads, and the attribute updates that go with them."""
    d, n = a.head_dim, len(q_heads)
    q_idx, kv_idx = _head_index(q_heads, d), _head_index(kv_heads, d)
    swaps.append((a.o, _slice(a.o, cols=q_idx)))
    if family == "gpt2":
        e = a.module.split_size
        idx = torch.cat([q_idx, _head_index(q_heads, d, e), _head_index(q_heads, d, 2 * e)])
        swaps.append((a.module.c_attn, _slice(a.module.c_attn, rows=idx)))
        attrs += [(a.module, "num_heads", n), (a.module, "split_size", n * d)]
        return
    (q, _), (k, _), (v, _) = a.q[0], a.k[0], a.v[0]
    swaps += [(q, _slice(q, rows=q_idx)), (k, _slice(k, rows=kv_idx)), (v, _slice(v, rows=kv_idx))]
    if family == "bert":
        attrs += [(a.module, "num_attention_heads", n), (a.module, "all_head_size", n * d)]
    else:
        attrs.append((a.module, "num_key_value_groups", n // len(kv_heads)))


def _update_config(config, family, t: _Targets, n_q, n_kv, head_dim, kept_layers, orig_heads):
    if family == "gpt2":
        config.n_inner = t.ffn
    else:
        config.intermediate_size = t.ffn
    config.num_hidden_layers = len(kept_layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept_layers]
    if family == "llama":
        config.num_attention_heads, config.num_key_value_heads = n_q, n_kv
        config.head_dim = head_dim
    elif n_q != orig_heads:
        # hidden_size / num_attention_heads cannot describe fewer heads of the same size
        config.llmkern_heads = {"num_attention_heads": n_q, "head_dim": head_dim}


def apply_saved_layout(model: nn.Module) -> None:
    """Shrink the attention of a freshly built BERT / GPT-2 (``cls(config)``) to the head layout
    its config records under ``llmkern_heads`` (written by :func:`prune_structure`); llmkern.load
    calls this before loading the weights. No-op without that entry."""
    base, family = _backbone(model)
    layout = getattr(base.config, "llmkern_heads", None)
    if not layout:
        return
    n = int(layout["num_attention_heads"])
    _, _, _, attns, _ = _model_parts(base, family)
    for a in attns:
        if a.head_dim != int(layout["head_dim"]):
            raise ValueError(
                f"llmkern_heads records head_dim {layout['head_dim']}, the model has {a.head_dim}"
            )
        swaps, attrs = [], []
        _plan_heads(a, family, list(range(n)), list(range(n)), swaps, attrs)
        _apply(model, swaps, attrs)


def _apply(model, swaps, attrs):
    names = {id(m): n for n, m in model.named_modules()}
    from llmkern.compress.modules import set_module

    for old, new in swaps:
        set_module(model, names[id(old)], new)
    for obj, name, value in attrs:
        setattr(obj, name, value)


def _prune_step(model, base, family, orig, t: _Targets, importance, calibration, seed, layer_map,
                units):  # fmt: skip
    """Score the current model, then shrink it to the targets ``t``: every new layer is built
    first, then swapped in. Updates ``layer_map`` (original index of every remaining layer) and
    ``units`` (per original layer, the original indices of the kept neurons and heads)."""
    parent, attr, blocks, attns, ffns = _model_parts(base, family)
    a0 = attns[0]
    want = (
        t.kv < a0.n_kv or t.per_group < a0.n_heads // a0.n_kv,
        t.ffn < _out_features(ffns[0].up[0]),
        t.layers < len(blocks),
    )
    if not any(want):
        return
    scores = _unit_scores(model, blocks, attns, ffns, importance, calibration, want, seed)
    kept = _top(torch.tensor(scores["layers"]), t.layers) if want[2] else list(range(len(blocks)))
    swaps, attrs, new_units = [], [], {}
    n_q, n_kv = a0.n_heads, a0.n_kv
    for i in kept:
        a, f = attns[i], ffns[i]
        u = new_units[layer_map[i]] = dict(units[layer_map[i]])
        if want[1]:
            keep = _top(scores["ffn"][i], t.ffn)
            idx = torch.tensor(keep, dtype=torch.long)
            swaps += [(m, _slice(m, rows=idx)) for m in f.up]
            swaps.append((f.down, _slice(f.down, cols=idx)))
            u["ffn"] = [u["ffn"][j] for j in keep]
        if want[0]:
            kv_scores = scores["kv"][i] if "kv" in scores else None
            q_heads, kv_heads = _choose_heads(a, scores["heads"][i], kv_scores, t)
            _plan_heads(a, family, q_heads, kv_heads, swaps, attrs)
            n_q, n_kv = len(q_heads), len(kv_heads)
            u["heads"] = [u["heads"][j] for j in q_heads]
            u["kv_heads"] = [u["kv_heads"][j] for j in kv_heads]
    # Everything is built: now change the model.
    _apply(model, swaps, attrs)
    units.clear()
    units.update(new_units)
    if want[2]:
        setattr(parent, attr, nn.ModuleList([blocks[i] for i in kept]))
        for j, i in enumerate(kept):
            for m in blocks[i].modules():
                if hasattr(m, "layer_idx"):
                    m.layer_idx = j  # the KV cache is indexed by it
    _update_config(base.config, family, t, n_q, n_kv, a0.head_dim, kept, orig["heads"])
    layer_map[:] = [layer_map[i] for i in kept]


def prune_structure(
    model: nn.Module,
    ffn: float = 0.0,
    heads: float = 0.0,
    layers: int = 0,
    *,
    importance: str = "activation",
    calibration=None,
    gqa: str = "groups",
    iterations: int = 1,
    recovery: Recovery | None = None,
    seed: int = 0,
) -> Report:
    """Remove the fraction ``ffn`` of the FFN neurons and ``heads`` of the attention heads of
    every layer, and ``layers`` whole layers, from a Hugging Face BERT / GPT-2 / Llama model, in
    place. ``importance``: activation (needs ``calibration``), l1, taylor (needs ``calibration``
    batches for which the model returns a loss) or random. ``gqa``: with grouped-query attention,
    drop whole KV groups ("groups") or the same number of query heads in every group ("heads";
    a ValueError without grouped-query attention). ``seed``: for importance="random" only.
    ``iterations`` > 1 prunes in that many equal steps, scoring the current model each time;
    with ``recovery`` (:class:`Recovery`) the model is distilled from the unpruned one after
    every step. Returns a :class:`Report`: per original layer what was removed; ``notes`` hold
    ``kept_layers`` (original indices), ``kept_units`` (per kept original layer, the original
    indices of its kept "ffn" neurons, query "heads" and "kv_heads") and the recovery runs."""
    base, family = _backbone(model)
    _check_ratio("ffn", ffn)
    _check_ratio("heads", heads)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if gqa not in GQA_MODES:
        raise ValueError(f"gqa must be one of {GQA_MODES}, got {gqa!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    _, _, blocks, attns, ffns = _model_parts(base, family)
    n = len(blocks)
    if isinstance(layers, bool) or not isinstance(layers, int) or not 0 <= layers < n:
        raise ValueError(
            f"layers must be an int in [0, {n - 1}] (the model has {n} layers), got {layers!r}"
        )
    if importance in ("activation", "taylor"):
        if calibration is None:
            raise ValueError(f"importance={importance!r} needs calibration batches")
        calibration = calibration_batches(calibration)  # read once: generators are consumed
    elif calibration is not None:
        raise ValueError(f"calibration is not used by importance={importance!r}")
    if seed != 0 and importance != "random":
        raise ValueError(f"seed applies to importance='random' only, not {importance!r}")
    _check_plain(attns, ffns)
    shapes = {(a.n_heads, a.n_kv, a.head_dim, _out_features(f.up[0]))
              for a, f in zip(attns, ffns, strict=True)}  # fmt: skip
    if len(shapes) != 1:
        raise ValueError(f"prune_structure needs every layer of one shape, found {sorted(shapes)}")
    if (
        layers
        and family == "gpt2"
        and getattr(base.config, "scale_attn_by_inverse_layer_idx", False)
    ):
        raise ValueError(
            "cannot remove layers from a GPT-2 with scale_attn_by_inverse_layer_idx: the "
            "scaling of every later layer would change"
        )
    a0 = attns[0]
    if gqa != "groups" and a0.n_kv == a0.n_heads:
        raise ValueError(
            f"gqa={gqa!r} applies to grouped-query attention; this model has as many kv heads as "
            "query heads"
        )
    orig = {"ffn": _out_features(ffns[0].up[0]), "heads": a0.n_heads, "kv": a0.n_kv, "layers": n}
    final = _targets(orig, ffn, heads, layers, gqa, 1.0)
    if min(final.ffn, final.kv, final.per_group) < 1:
        raise ValueError(
            f"ffn={ffn}, heads={heads} would leave no FFN neuron or no head in a layer "
            f"(kept: {final.ffn} neurons, {final.kv} kv heads x {final.per_group} query heads)"
        )
    is_lm = model is not base
    if recovery is not None:
        if not isinstance(recovery, Recovery):
            raise TypeError(f"recovery must be a llmkern Recovery, got {type(recovery).__name__}")
        recovery.check(is_lm)

    before = [(type(b).__name__, count_params(b), count_bytes(b)) for b in blocks]
    report = Report("prune_structure").start(model)
    teacher = None
    if recovery is not None:
        teacher = recovery.teacher
        if teacher is None:
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
    layer_map = list(range(n))
    units = {i: {"ffn": list(range(orig["ffn"])), "heads": list(range(orig["heads"])),
                 "kv_heads": list(range(orig["kv"]))} for i in range(n)}  # fmt: skip
    runs = []
    for step in range(1, iterations + 1):
        t = _targets(orig, ffn, heads, layers, gqa, step / iterations)
        _prune_step(model, base, family, orig, t, importance, calibration, seed + step, layer_map,
                    units)  # fmt: skip
        if recovery is not None:
            runs.append(_recover(recovery, teacher, model, list(layer_map), iterations, is_lm))

    _, _, blocks_now, attns_now, _ = _model_parts(base, family)
    a1 = attns_now[0]
    changes = [f"ffn {orig['ffn']} -> {final.ffn}" if final.ffn != orig["ffn"] else "",
               f"heads {a0.n_heads} -> {a1.n_heads}" if a1.n_heads != a0.n_heads else "",
               f"kv heads {a0.n_kv} -> {a1.n_kv}" if a0.n_kv not in (a0.n_heads, a1.n_kv) else ""]  # fmt: skip
    what = ", ".join(c for c in changes if c) or "kept"
    prefix = {"bert": "encoder.layer", "gpt2": "h", "llama": "layers"}[family]
    now = dict(zip(layer_map, blocks_now, strict=True))
    for i, (cls, params, nbytes) in enumerate(before):
        b = now.get(i)
        report.layers.append(
            LayerRow(
                f"{prefix}.{i}",
                cls,
                cls if b is not None else "-",
                what if b is not None else "layer removed",
                params,
                count_params(b) if b is not None else 0,
                nbytes,
                count_bytes(b) if b is not None else 0,
            )
        )
    report.notes.update(importance=importance, kept_layers=layer_map, kept_units=units)
    if runs:
        report.notes["recovery"] = [
            {"steps": r.steps, "seconds": round(r.seconds, 2), "last_loss": r.losses[-1] if r.losses else None}
            for r in runs
        ]  # fmt: skip
    return report.finish(model)
