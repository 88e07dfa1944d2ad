"""Llama-shaped decode on CPU: ms per generated token, one token at a time with the KV cache.

The model is a transformers ``LlamaForCausalLM`` built from a ``LlamaConfig`` with RANDOM
weights (no download; the speed of a layer does not depend on its values, the text is
meaningless). Default: 4 layers, hidden 2048, FFN 5632, 16 heads (4 KV heads), vocabulary 32000,
untied LM head. Each variant prefills a short prompt, then generates greedily; every decode step
(forward of one token + argmax) is timed alone and ms/token is the median step after warm-up.

Variants (every linear layer AND the LM head in the variant's form; embeddings and norms stay
float, in the activations' dtype):

  fp32, bf16               nn.Linear
  torch int8pack bf16      int8 weight-only on torch._weight_int8pack_mm (torchao/gpt-fast on CPU)
  torch dynamic int8       torch.ao dynamic quantized Linear (FBGEMM), fp32 activations
  llmkern w8 fp32 / bf16   llmkern.quantize(model, "w8", skip=[])
  llmkern w8a8 fp32        llmkern.quantize(model, "w8a8", skip=[])
  llmkern 2:4 fp32 / bf16  llmkern.prune(model, "2:4", skip=[])  (magnitude)
  llmkern 2:4+w8 fp32/bf16 prune, then quantize "w8"

(``skip=[]``: the compression API leaves the LM head in float by default.) bf16 variants convert
the float model to bf16 first and then compress it.

Columns: ms/token and tokens/s; weight MB, the bytes of the linear layers (LM head included)
that a decode step reads as the variant stores them (the packed copy where a module keeps one,
scales and 2:4 metadata included); floor, those bytes / the read bandwidth measured in this run;
%bw = floor / ms per token; speedups vs fp32 and bf16; match, how many of the first generated
tokens equal the reference's (fp32, or fp32 2:4 for the 2:4 variants: pruning changes the model)
and cos, the cosine of the prompt's last logits to the reference's. A variant whose logits are
not finite, or whose first tokens differ, is flagged WARN (not an error: int8 noise can flip a
near tie between random-model logits).

    flock /tmp/llmkern_bench.lock python bench/bench_decode.py [--quick | --tiny] [--json PATH]
        [--threads N] [--tokens N] [--variants "fp32,llmkern w8 bf16"] [--layers ...]
"""

from __future__ import annotations

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
from llmkern import benchmark as B
from llmkern.nn import Int8Linear, Int8WeightOnlyLinear, Sparse24Linear

SIZES = {  # layers, hidden, ffn, heads, kv_heads, vocab, prompt, tokens
    "default": (4, 2048, 5632, 16, 4, 32000, 16, 32),
    "quick": (2, 1024, 2816, 8, 2, 32000, 8, 12),
    "tiny": (1, 64, 128, 4, 2, 256, 4, 6),  # for the test that keeps this script working
}
WARMUP_STEPS = 2  # first decode steps (lazy set-up, caches) left out of the median
CHECK_STEPS = 4  # leading generated tokens compared with the reference


@dataclass
class Variant:
    name: str
    dtype: torch.dtype  # the activations'
    reference: str  # the variant whose tokens and logits it should reproduce
    build: object  # fp32 model -> model (in place is fine: it gets a copy)


def _int8pack(model: nn.Module) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, B.TorchInt8PackLinear(mod))
    return model


def _pruned(model: nn.Module) -> nn.Module:
    llmkern.prune(model, "2:4", skip=[])
    return model


def _quantized(model: nn.Module, method: str) -> nn.Module:
    llmkern.quantize(model, method, skip=[])
    return model


def variants() -> list[Variant]:
    f32, bf16 = torch.float32, torch.bfloat16
    out = [
        Variant("fp32", f32, "fp32", lambda m: m),
        Variant("bf16", bf16, "fp32", lambda m: m),
        Variant("torch int8pack bf16", bf16, "fp32", _int8pack),
        Variant("torch dynamic int8", f32, "fp32", B.torch_dynamic_int8),
        Variant("llmkern w8 fp32", f32, "fp32", lambda m: _quantized(m, "w8")),
        Variant("llmkern w8 bf16", bf16, "fp32", lambda m: _quantized(m, "w8")),
        Variant("llmkern w8a8 fp32", f32, "fp32", lambda m: _quantized(m, "w8a8")),
        Variant("llmkern 2:4 fp32", f32, "llmkern 2:4 fp32", _pruned),
        Variant("llmkern 2:4 bf16", bf16, "llmkern 2:4 fp32", _pruned),
        Variant("llmkern 2:4+w8 fp32", f32, "llmkern 2:4 fp32",
                lambda m: _quantized(_pruned(m), "w8")),
        Variant("llmkern 2:4+w8 bf16", bf16, "llmkern 2:4 fp32",
                lambda m: _quantized(_pruned(m), "w8")),
    ]  # fmt: skip
    if not B.has_int8pack_mm():
        out = [v for v in out if "int8pack" not in v.name]
    return out


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the linear layers' weights (scales, 2:4 metadata, bias included) in the form the
    decode step reads: llmkern's int8 modules keep a packed copy next to the canonical ``qweight``
    and read only the packed one."""
    total = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            total += _nbytes(m.weight, m.bias)
        elif isinstance(m, Int8Linear | Int8WeightOnlyLinear):
            total += _nbytes(m.qweight if m._packed is None else m._packed, m.weight_scale, m.bias)
        elif isinstance(m, Sparse24Linear):
            total += _nbytes(m.values, m.meta, m.w_scale, m.bias)
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


def decode(model: nn.Module, prompt_ids: torch.Tensor, tokens: int) -> dict:
    """Prefill, then ``tokens`` greedy steps, each timed; the model's KV cache carries over."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=prompt_ids, past_key_values=cache, use_cache=True)
        first = out.logits[0, -1].float()
        finite = bool(torch.isfinite(first).all())
        tok = first.argmax()
        generated, times = [int(tok)], []
        for _ in range(tokens):
            t0 = time.perf_counter()
            out = model(input_ids=tok.view(1, 1), past_key_values=cache, use_cache=True)
            logits = out.logits[0, -1]
            tok = logits.argmax()
            generated.append(int(tok))
            times.append((time.perf_counter() - t0) * 1e3)
            finite = finite and bool(torch.isfinite(logits).all())
        step = lambda: model(input_ids=tok.view(1, 1), past_key_values=cache, use_cache=True)  # noqa: E731
        mem = B.peak_mb(step, "cpu")
    timed = times[WARMUP_STEPS:] or times
    return {"ms": statistics.median(timed), "tokens": generated, "first_logits": first,
            "finite": finite, "peak_mb": mem}  # fmt: skip


def check(result: dict, ref: dict) -> tuple[str, float, str]:
    n = min(CHECK_STEPS, len(result["tokens"]), len(ref["tokens"]))
    same = 0
    while same < n and result["tokens"][same] == ref["tokens"][same]:
        same += 1
    cos = float(torch.cosine_similarity(result["first_logits"], ref["first_logits"], dim=0))
    if not result["finite"]:
        flag = "WARN non-finite logits"
    elif same < n:
        flag = f"WARN tokens differ from step {same}"
    else:
        flag = ""
    return f"{same}/{n}", cos, flag


def table(rows: list[B.Row]) -> str:
    head = ["variant", "ms/token", "tokens/s", "weight MB", "floor ms", "%bw", "vs fp32",
            "vs bf16", "match", "cos", "check"]  # fmt: skip
    body = []
    for r in rows:
        e = r.extra
        body.append([r.impl, f"{r.median_ms:.2f}", f"{e['tokens_per_s']:.1f}",
                     f"{e['weight_bytes'] / 1e6:.1f}", f"{e['floor_ms']:.2f}",
                     f"{e['pct_read_bw']:.0f}%", f"{r.speedup_vs_baseline:.2f}x",
                     f"{e['speedup_vs_bf16']:.2f}x", e["match"], f"{e['logits_cos']:.4f}",
                     e["check"]])  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2 layers, hidden 1024, 12 tokens")
    size.add_argument("--tiny", action="store_true", help="a toy model (seconds; for the tests)")
    ap.add_argument("--json", help="write result rows here")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--variants", help="comma-separated variant names (default: all)")
    names = ("layers", "hidden", "ffn", "heads", "kv_heads", "vocab", "prompt", "tokens")
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
        ap.error(f"--tokens must be > {WARMUP_STEPS} (the warm-up steps are not timed)")
    chosen = variants()
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        unknown = [w for w in wanted if w not in {v.name for v in chosen}]
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; available: {[v.name for v in chosen]}")
        # The references and the two speed-up baselines always run (references first).
        keep = {"fp32", "bf16"} | {v.reference for v in chosen if v.name in wanted}
        chosen = [v for v in chosen if v.name in wanted or v.name in keep]

    bw = B.read_bandwidth_gbs()
    print(B.header(), flush=True)
    shape = dict(zip(names, size, strict=True))
    print(f"model: Llama-shaped, RANDOM weights (speed only), {shape}; all linears + LM head "
          f"compressed; read bandwidth {bw:.1f} GB/s (floor = weight bytes / this)", flush=True)  # fmt: skip
    base, prompt_ids = build_model(size)
    results: dict[str, dict] = {}
    rows: list[B.Row] = []
    for v in chosen:
        t0 = time.perf_counter()
        with torch.no_grad():
            model = v.build(copy.deepcopy(base).to(v.dtype))
        built_s = time.perf_counter() - t0
        res = results[v.name] = decode(model, prompt_ids, size[-1])
        match, cos, flag = check(res, results[v.reference])
        nbytes = linear_weight_bytes(model)
        floor = B.floor_ms(nbytes, bw)
        del model
        extra = {"tokens_per_s": round(1e3 / res["ms"], 2), "weight_bytes": nbytes,
                 "floor_ms": round(floor, 3), "pct_read_bw": round(100 * floor / res["ms"], 1),
                 "match": match, "logits_cos": round(cos, 5), "check": flag,
                 "reference": v.reference, "build_s": round(built_s, 1)}  # fmt: skip
        rows.append(B.Row("decode", shape, str(v.dtype).removeprefix("torch."), v.name,
                          res["ms"], res["peak_mb"], extra=extra))  # fmt: skip
        print(f"  {v.name:<22} {res['ms']:8.2f} ms/token  (built in {built_s:.1f} s) {flag}",
              flush=True)  # fmt: skip
    rows = B.with_speedups(rows, "fp32", same_dtype=False)
    for r in rows:
        r.extra["speedup_vs_bf16"] = round(results["bf16"]["ms"] / r.median_ms, 3)
    print()
    print(table(rows))
    meta = {"read_bandwidth_gbs": round(bw, 2), "weights": "random (LlamaConfig, seed 0)",
            "warmup_steps": WARMUP_STEPS, "check_steps": CHECK_STEPS}  # fmt: skip
    B.write_json(rows, args.json, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
