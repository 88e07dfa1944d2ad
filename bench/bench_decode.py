"""Llama-shaped decode on CPU: ms per generated token, one token at a time with the KV cache.

The model is a transformers ``LlamaForCausalLM`` built from a ``LlamaConfig`` with RANDOM
weights (no download; the speed of a layer does not depend on its values, the text is
meaningless). Default: 4 layers, hidden 2048, FFN 5632, 16 heads (4 KV heads), vocabulary 32000,
untied LM head. Every variant is built and prefills a short prompt, then the decode steps go round
the variants, one step of each in turn (so drift of the machine's speed hits all alike); every
step (forward of one token + argmax) is timed alone and ms/token is each variant's median step
after warm-up. All variants stay in memory together (peak RSS 10 GB at the default size).

Variants (every linear layer AND the LM head in the variant's form; embeddings and norms stay
float, in the activations' dtype):

  fp32, bf16               nn.Linear
  torch int8pack bf16      int8 weight-only on torch._weight_int8pack_mm (torchao/gpt-fast on CPU)
  torch dynamic int8       torch.ao dynamic quantized Linear (FBGEMM), fp32 activations
  llmkern w8 fp32 / bf16   llmkern.quantize(model, "w8", skip=[])
  llmkern w8a8 fp32        llmkern.quantize(model, "w8a8", skip=[])
  llmkern 2:4 fp32 / bf16  llmkern.prune(model, "2:4", skip=[])  (magnitude)
  llmkern 2:4+w8 fp32/bf16 prune, then quantize "w8"
  llmkern 2:4+w8 fp32 lean the same with max_sparse_rows = None: the 2:4 kernel at every batch
                           size, never a dense copy (memory 0.63x of w8's)

(``skip=[]``: the compression API leaves the LM head in float by default.) The bf16 forms are the
compressed fp32 model moved with ``.to(torch.bfloat16)``.

Columns: ms/token and tokens/s; weight MB, the bytes of the linear layers (LM head included)
that a decode step reads as the variant stores them (the packed copy where a module keeps one,
scales and 2:4 metadata included; a 2:4 module that took the dense path counts the dense form
it read, see llmkern.cpu.sparse24.DENSE_ROWS); floor, those bytes / the read bandwidth measured
in this run;
%bw = floor / ms per token; speedups vs fp32 and bf16. Correctness: the reference (fp32, or fp32
2:4 for the 2:4 variants: pruning changes the model) generates greedily and every other variant
is fed the reference's tokens, so its logits are compared step by step: match, the steps whose
argmax equals the reference's (on random weights the top logits are near ties, so bf16 rounding
alone flips a few), and cos, the lowest cosine of the logits to the reference's. A variant with
non-finite logits or cos < COS_WARN is flagged WARN in the check column (not an error).

    flock /tmp/llmkern_bench.lock python bench/bench_decode.py [--quick | --tiny] [--json PATH]
        [--threads N] [--steps N] [--variants "llmkern w8 bf16,..."] [--layers N ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch: benchmark.page_policy()

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

import llmkern
from llmkern import _ext
from llmkern.apps import benchmark as B
from llmkern.nn import Int8Linear, Int8WeightOnlyLinear, Sparse24Linear

SIZES = {  # layers, hidden, ffn, heads, kv_heads, vocab, prompt, decode steps (warm-up included)
    "default": (4, 2048, 5632, 16, 4, 32000, 16, 40),
    "quick": (2, 1024, 2816, 8, 2, 32000, 8, 10),
    "tiny": (1, 64, 128, 4, 2, 256, 4, 6),  # for the test that keeps this script working
}
WARMUP_STEPS = 2  # first decode steps (lazy set-up, caches) left out of the median
COS_WARN = 0.99  # logits this far from the reference's mean a broken path, not rounding


@dataclass
class Variant:
    name: str
    dtype: torch.dtype  # the activations'
    reference: str  # the variant whose greedy tokens it is fed and whose logits it should match
    source: str  # "fp32" or an earlier variant: it starts from a copy of that model ...
    build: object  # ... and this turns the copy into the variant (in place, returns it)


def _int8pack(model: nn.Module) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, B.TorchInt8PackLinear(mod))
    return model


def _compress(method: str):
    def build(model: nn.Module) -> nn.Module:
        if method == "2:4":
            llmkern.prune(model, "2:4", skip=[])
        else:
            llmkern.quantize(model, method, skip=[])
        return model

    return build


def _sparse_only(model: nn.Module) -> nn.Module:
    """Every 2:4 module on its 2:4 kernel at every batch size: no dense copy is built."""
    for mod in model.modules():
        if isinstance(mod, Sparse24Linear):
            mod.max_sparse_rows = None
    return model


def variants() -> list[Variant]:
    """In run order; a variant's source and reference come before it. Compressing is slow (2:4
    compression above all), so each compression runs once and the bf16 and 2:4+w8 forms start
    from the compressed model (the int8 modules keep float32 scales under .to(bf16))."""
    f32, bf16 = torch.float32, torch.bfloat16
    to_bf16 = lambda model: model.to(bf16)  # noqa: E731
    out = [
        Variant("fp32", f32, "fp32", "fp32", lambda model: model),
        Variant("bf16", bf16, "fp32", "fp32", to_bf16),
        Variant("torch int8pack bf16", bf16, "fp32", "bf16", _int8pack),
        Variant("torch dynamic int8", f32, "fp32", "fp32", B.torch_dynamic_int8),
        Variant("llmkern w8 fp32", f32, "fp32", "fp32", _compress("w8")),
        Variant("llmkern w8 bf16", bf16, "fp32", "llmkern w8 fp32", to_bf16),
        Variant("llmkern w8a8 fp32", f32, "fp32", "fp32", _compress("w8a8")),
        Variant("llmkern 2:4 fp32", f32, "llmkern 2:4 fp32", "fp32", _compress("2:4")),
        Variant("llmkern 2:4 bf16", bf16, "llmkern 2:4 fp32", "llmkern 2:4 fp32", to_bf16),
        Variant("llmkern 2:4+w8 fp32", f32, "llmkern 2:4 fp32", "llmkern 2:4 fp32",
                _compress("w8")),
        Variant("llmkern 2:4+w8 bf16", bf16, "llmkern 2:4 fp32", "llmkern 2:4+w8 fp32", to_bf16),
        Variant("llmkern 2:4+w8 fp32 lean", f32, "llmkern 2:4 fp32", "llmkern 2:4+w8 fp32",
                _sparse_only),
    ]  # fmt: skip
    if not B.has_int8pack_mm():
        out = [v for v in out if "int8pack" not in v.name]
    return out


def select(chosen: list[Variant], wanted: list[str]) -> list[Variant]:
    """``wanted`` with what they need (sources, references) and the fp32/bf16 baselines."""
    by = {v.name: v for v in chosen}
    keep, todo = set(), ["fp32", "bf16", *wanted]
    while todo:
        name = todo.pop()
        if name in by and name not in keep:
            keep.add(name)
            todo += [by[name].source, by[name].reference]
    return [v for v in chosen if v.name in keep]


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def linear_weight_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the linear layers' weights (scales, 2:4 metadata, bias included) in the form the
    decode step (one row of ``dtype`` x) reads: llmkern's int8 modules keep a packed copy next to
    the canonical ``qweight`` and read only the packed one; a 2:4 module on its dense path at
    one row reads its dense form. Call it after the decode (those forms are built on first use;
    the prefill may build a dense form that the one-row steps do not read)."""
    total = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            total += _nbytes(m.weight, m.bias)
        elif isinstance(m, Int8Linear | Int8WeightOnlyLinear):
            total += _nbytes(m.qweight if m._packed is None else m._packed, m.weight_scale, m.bias)
        elif isinstance(m, Sparse24Linear):
            # On the dense path (DENSE_ROWS) at one row the module reads only the dense form it
            # built on first use, not the compressed weight.
            dense = m.runs_dense(1, dtype) and m._prepared.built()
            total += _nbytes(*(dense or [m.values, m.meta]), m.w_scale, m.bias)
        elif isinstance(m, B.TorchInt8PackLinear):
            total += _nbytes(m.weight_int8, m.scales, m.bias)
        elif isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w = m.weight()  # int8, one scale per tensor; FBGEMM's packed copy is the same size
            total += w.numel() + _nbytes(m.bias())
    return total


def build_model(size: tuple) -> tuple[nn.Module, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, ffn, heads, kv_heads, vocab, prompt, tokens = size
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
        max_position_embeddings=max(256, 2 * (prompt + tokens)), tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    prompt_ids = torch.randint(0, vocab, (1, prompt))
    return model, prompt_ids


class Decoding:
    """One variant mid-generation: prefilled at construction, then decode steps one at a time,
    each timed (forward of one token + argmax) with the KV cache carried over. Without ``ref``
    the model generates greedily; with it (an earlier Decoding, one step ahead), it is fed the
    reference's tokens (the same work) so that its logits can be compared step by step."""

    def __init__(self, model: nn.Module, prompt_ids: torch.Tensor, ref: Decoding | None):
        from transformers import DynamicCache

        self.model, self.ref, self.cache = model, ref, DynamicCache()
        self.logits, self.times = [], []
        with torch.inference_mode():
            out = model(input_ids=prompt_ids, past_key_values=self.cache, use_cache=True)
        self.logits.append(out.logits[0, -1].float())
        self.tok = self.logits[-1].argmax()

    def _forward(self):
        return self.model(input_ids=self.tok.view(1, 1), past_key_values=self.cache, use_cache=True)

    def step(self, i: int) -> None:
        if self.ref is not None:
            self.tok = self.ref.logits[i].argmax()
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self._forward()
            self.tok = out.logits[0, -1].argmax()
            self.times.append((time.perf_counter() - t0) * 1e3)
        self.logits.append(out.logits[0, -1].float())

    def result(self) -> dict:
        with torch.inference_mode():
            mem = B.peak_mb(self._forward, "cpu")
        logits = torch.stack(self.logits)
        return {"ms": statistics.median(self.times[WARMUP_STEPS:]), "logits": logits,
                "tokens": logits.argmax(1), "peak_mb": mem}  # fmt: skip


def check(result: dict, ref: dict) -> tuple[str, float, str]:
    """(steps whose argmax equals the reference's, the lowest logits cosine over the steps,
    a warning or "")."""
    same = int((result["tokens"] == ref["tokens"]).sum())
    cos = float(torch.cosine_similarity(result["logits"], ref["logits"], dim=1).min())
    if not bool(torch.isfinite(result["logits"]).all()):
        flag = "WARN non-finite logits"
    elif not cos >= COS_WARN:
        flag = f"WARN logits cos {cos:.3f} < {COS_WARN}"
    else:
        flag = ""
    return f"{same}/{len(ref['tokens'])}", cos, flag


def table(rows: list[B.Row]) -> str:
    head = ["variant", "ms/token", "tokens/s", "weight MB", "floor ms", "%bw", "vs fp32",
            "vs bf16", "match", "cos", "check"]  # fmt: skip
    body = []
    for r in rows:
        e = r.extra
        body.append([r.impl, f"{r.median_ms:.2f}", f"{e['tokens_per_s']:.1f}",
                     f"{e['weight_bytes'] / 1e6:.1f}", f"{e['floor_ms']:.2f}",
                     f"{e['pct_read_bw']:.0f}%", f"{r.speedup_vs_baseline:.2f}x",
                     f"{e['speedup_vs_bf16']:.2f}x", e["argmax_match"], f"{e['logits_cos']:.4f}",
                     e["check"]])  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2 layers, hidden 1024, 10 steps")
    size.add_argument("--tiny", action="store_true", help="a toy model (seconds; for the tests)")
    ap.add_argument("--json", help="write result rows here")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--variants", help="comma-separated variant names (default: all)")
    names = ("layers", "hidden", "ffn", "heads", "kv_heads", "vocab", "prompt", "steps")
    for name in names:
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, help="override the size")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _ext.available():
        print(f"llmkern._C is not built: {_ext.load_error}", file=sys.stderr)
        return 1
    size = list(SIZES["quick" if args.quick else "tiny" if args.tiny else "default"])
    for i, name in enumerate(names):
        if getattr(args, name) is not None:
            size[i] = getattr(args, name)
    if size[-1] <= WARMUP_STEPS:
        ap.error(f"--steps must be > {WARMUP_STEPS} (the warm-up steps are not timed)")
    chosen = variants()
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        unknown = [w for w in wanted if w not in {v.name for v in chosen}]
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; available: {[v.name for v in chosen]}")
        chosen = select(chosen, wanted)

    bw = B.read_bandwidth_gbs()
    print(B.header(), flush=True)
    shape = dict(zip(names, size, strict=True))
    print(f"model: Llama-shaped, RANDOM weights (speed only), {shape}; all linears + LM head "
          f"compressed; read bandwidth {bw:.1f} GB/s (floor = weight bytes / this)", flush=True)  # fmt: skip
    base, prompt_ids = build_model(size)
    # Every variant is built and prefilled first, then the decode steps go round the variants
    # one step each, so that the machine's drift over the run (+-10% on the VMs) hits all of
    # them alike instead of the later variants.
    models = {"fp32": base}
    built_s = {}
    for v in chosen:
        t0 = time.perf_counter()
        with torch.no_grad():  # fp32 is the base model itself; the others start from a copy
            models[v.name] = base if v.name == "fp32" else v.build(copy.deepcopy(models[v.source]))
        built_s[v.name] = time.perf_counter() - t0
    runs: dict[str, Decoding] = {}
    for v in chosen:
        ref = runs[v.reference] if v.reference != v.name else None
        runs[v.name] = Decoding(models[v.name], prompt_ids, ref)
    for i in range(size[-1]):
        for v in chosen:
            runs[v.name].step(i)
    results = {v.name: runs[v.name].result() for v in chosen}
    rows: list[B.Row] = []
    for v in chosen:
        res = results[v.name]
        match, cos, flag = check(res, results[v.reference])
        nbytes = linear_weight_bytes(models[v.name], v.dtype)
        floor = B.floor_ms(nbytes, bw)
        extra = {"tokens_per_s": round(1e3 / res["ms"], 2), "weight_bytes": nbytes,
                 "floor_ms": round(floor, 3), "pct_read_bw": round(100 * floor / res["ms"], 1),
                 "argmax_match": match, "logits_cos": round(cos, 5), "check": flag,
                 "reference": v.reference, "build_s": round(built_s[v.name], 1)}  # fmt: skip
        rows.append(B.Row("decode", shape, str(v.dtype).removeprefix("torch."), v.name,
                          res["ms"], res["peak_mb"], extra=extra))  # fmt: skip
        print(f"  {v.name:<24} {res['ms']:8.2f} ms/token  "
              f"(built in {built_s[v.name]:.1f} s) {flag}", flush=True)  # fmt: skip
    rows = B.with_speedups(rows, "fp32", same_dtype=False)
    for r in rows:
        r.extra["speedup_vs_bf16"] = round(results["bf16"]["ms"] / r.median_ms, 3)
    print()
    print(table(rows))
    meta = {"read_bandwidth_gbs": round(bw, 2), "weights": "random (LlamaConfig, seed 0)",
            "warmup_steps": WARMUP_STEPS}  # fmt: skip
    B.write_json(rows, args.json, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
