"""``llmkern compress``: compress one model several ways and compare them side by side.

For a Hugging Face model folder (default: the packaged all-MiniLM-L6-v2) this applies each method
to a copy of the float model and measures, in one process:

- size: bytes of the model's state dict;
- latency at batch 1 and at batch 32, 128 tokens each, every model timed in turn (round robin,
  median), with the ratio to fp32;
- fidelity: cosine similarity of sentence embeddings to fp32 on a built-in sentence set (mean and
  minimum) and nearest-neighbour agreement.

"2:4 + recovery" prunes like "2:4 (Wanda)", re-fits the kept weights layer by layer to the
dense layers' outputs (least squares on calibration inputs), then distils the pruned model from
the dense one for a bounded time, keeping the 2:4 masks, with llmkern's KD loss over in-batch
similarity distributions plus hidden-state and embedding terms, on news sentences (gensim's Lee
corpus) interleaved with standard-library docstrings.
It writes the chosen compressed model (an llmkern checkpoint), a JSON report and a PNG chart.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from llmkern.apps import hf, texts
from llmkern.apps.benchmark import environment, time_fn
from llmkern.apps.fidelity import fidelity
from llmkern.compress.checkpoint import load, save
from llmkern.compress.distill import distill, no_dropout
from llmkern.compress.embedding import recovery_loss
from llmkern.compress.lowrank import low_rank
from llmkern.compress.prune import prune
from llmkern.compress.quantize import quantize
from llmkern.compress.report import count_bytes
from llmkern.compress.structure import Recovery, _check_ratio, prune_structure

METHODS = ("fp32", "torch-int8", "w8a8", "w8", "2:4", "2:4+int8", "low-rank", "2:4+recovery",
           "structured", "structured+recovery", "structured+recovery+w8a8")  # fmt: skip
BASELINES = ("fp32", "torch-int8")  # not llmkern's: measured for comparison, never saved
LABELS = {
    "fp32": "fp32 (baseline)",
    "torch-int8": "torch dynamic int8",
    "w8a8": "W8A8",
    "w8": "W8 weight-only",
    "2:4": "2:4 (Wanda)",
    "2:4+int8": "2:4 + int8",
    "low-rank": "low-rank",
    "2:4+recovery": "2:4 + recovery",
    "structured": "structured",
    "structured+recovery": "structured + recovery",
    "structured+recovery+w8a8": "structured + recovery + W8A8",
}
STRUCTURED = ("structured", "structured+recovery", "structured+recovery+w8a8")


@dataclass
class Settings:
    model_dir: str | None = None
    methods: tuple[str, ...] = METHODS
    out_dir: str = "llmkern-compress-out"
    save_method: str | None = None  # default: the first compressed method run
    smoothquant: float | None = None
    energy: float = 0.9
    rank: int | None = None
    recovery_seconds: float = 180.0
    recovery_lr: float = 5e-4
    recovery_batch: int = 16
    recovery_calib_batches: int = 32  # for the layer-wise re-fit before the distillation
    # structured pruning (prune_structure): fractions of FFN neurons and heads, layers removed.
    # Half the depth measured best on MiniLM: mean cosine 0.68 unrecovered (the half of FFN and
    # heads: 0.58), and each distillation step costs half as much.
    structured_ffn: float = 0.0
    structured_heads: float = 0.0
    structured_layers: int = 3
    structured_seconds: float = 120.0
    shapes: tuple[tuple[int, int], ...] = ((1, 128), (32, 128))
    reps: int = 7
    calib_batches: int = 8
    quick: bool = False
    seed: int = 0
    progress: bool = True


@dataclass
class Row:
    method: str
    label: str
    size_mb: float
    latency_ms: dict = field(default_factory=dict)
    speedup: dict = field(default_factory=dict)
    fidelity: dict = field(default_factory=dict)
    note: str = ""


def quick_settings(s: Settings) -> Settings:
    """Seconds instead of minutes: small shapes, few repetitions, a short recovery."""
    s.shapes, s.reps, s.calib_batches = ((1, 16), (4, 16)), 2, 2
    s.recovery_seconds = min(s.recovery_seconds, 5.0)
    s.structured_seconds = min(s.structured_seconds, 5.0)
    s.recovery_calib_batches = 2
    s.quick = True
    return s


def _batches(tokenizer, sentences, batch_size, n, max_length=64):
    return [
        hf.tokenize(tokenizer, sentences[i * batch_size : (i + 1) * batch_size], max_length)
        for i in range(min(n, len(sentences) // batch_size))
    ]


def recovery_corpus(train_docs: list[str], seed: int = 0) -> list[str]:
    """News sentences interleaved with docstring sentences (the news repeated as needed): the
    docstrings alone are technical prose, and fidelity on ordinary sentences then recovers
    markedly more slowly."""
    news = texts.sentences_from(texts.news_corpus())
    random.Random(seed).shuffle(news)
    return [s for i, d in enumerate(train_docs) for s in (news[i % len(news)], d)]


def _prune_and_recover(settings, teacher, model, tokenizer, pooling, train, ref, log):
    """Wanda 2:4 pruning of ``model``, a layer-wise least-squares re-fit of the kept weights,
    then, with the masks held, a time-bounded distillation from ``teacher``. Returns the prune
    report, the distillation report and the fidelity (to ``ref``, the teacher's embeddings of
    the built-in sentences) after the re-fit."""
    mixed = recovery_corpus(train[16 * settings.calib_batches :], settings.seed)
    corpus = _batches(tokenizer, mixed, settings.recovery_batch, 10_000, max_length=48)
    calib = corpus[: settings.recovery_calib_batches]
    runs, refitted = [], []

    def recover(m, step):
        refitted.append(fidelity(ref, hf.embed(m, tokenizer, texts.SENTENCES, pooling)))
        log(f"  2:4 + recovery: mean cosine {refitted[-1].mean_cosine:.4f} after the re-fit")
        # Only the transformer blocks learn: the embeddings are not pruned, and freezing them
        # keeps half of the parameters out of the optimiser.
        emb = m.get_input_embeddings() if hasattr(m, "get_input_embeddings") else None
        frozen = [p for p in (emb.parameters() if emb is not None else []) if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        with no_dropout(m):
            runs.append(distill(teacher, m, corpus, steps=3 if settings.quick else None,
                                loss_fn=recovery_loss(pooling), lr=settings.recovery_lr,
                                lr_decay=True, max_seconds=settings.recovery_seconds,
                                progress=settings.progress))  # fmt: skip
        for p in frozen:
            p.requires_grad_(True)

    report = prune(
        model, importance="wanda", calibration=calib, reconstruct=True, fine_tune=recover
    )
    return report, runs[-1], refitted[-1]


def _structured(settings, teacher, model, tokenizer, pooling, train, calib, recover: bool):
    """prune_structure with activation importance (Minitron) on the calibration batches; with
    ``recover``, then distilled from ``teacher`` for ``structured_seconds`` with the loss of
    "2:4 + recovery" (hidden states matched to the teacher layers they came from)."""
    rec = None
    if recover:
        mixed = recovery_corpus(train[16 * settings.calib_batches :], settings.seed)
        corpus = _batches(tokenizer, mixed, settings.recovery_batch, 10_000, max_length=48)
        rec = Recovery(corpus, steps=3 if settings.quick else None, lr=settings.recovery_lr,
                       max_seconds=settings.structured_seconds, teacher=teacher,
                       progress=settings.progress,
                       loss_fn=lambda s, t, b, m: recovery_loss(pooling, layer_map=m)(s, t, b))  # fmt: skip
    return prune_structure(model, settings.structured_ffn, settings.structured_heads,
                           settings.structured_layers, calibration=calib, recovery=rec)  # fmt: skip


def _torch_dynamic_int8(model: nn.Module) -> nn.Module:
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice: it is the reference point here
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def build_variants(
    settings: Settings, base: nn.Module, tokenizer, pooling: str, ref: torch.Tensor, log
) -> dict:
    """name -> (model, [reports], note) for every requested method."""
    train = texts.sentences_from(texts.docstring_corpus("train"))
    random.Random(settings.seed).shuffle(train)
    calib = _batches(tokenizer, train, 16, settings.calib_batches)
    out = {}
    pruned, prune_report = None, None  # shared by the 2:4 rows (Wanda scores computed once)
    recovered, recovered_report = None, None  # shared by the structured + recovery rows
    for method in settings.methods:
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        reports, note = [], ""
        if method == "torch-int8":
            model = _torch_dynamic_int8(model)
            note = "torch.ao quantize_dynamic (per-tensor activations), for comparison"
        elif method == "w8a8":
            reports.append(quantize(model, "w8a8", calibration=calib if settings.smoothquant else None,
                                    smoothquant=settings.smoothquant))  # fmt: skip
        elif method == "w8":
            reports.append(quantize(model, "w8"))
        elif method in ("2:4", "2:4+int8"):
            if pruned is None:
                pruned = copy.deepcopy(base)
                prune_report = prune(pruned, importance="wanda", calibration=calib)
            model = copy.deepcopy(pruned)
            reports.append(prune_report)
            if method == "2:4+int8":
                reports.append(quantize(model, "w8a8"))
        elif method == "low-rank":
            reports.append(
                low_rank(
                    model, rank=settings.rank, energy=None if settings.rank else settings.energy
                )
            )
            note = f"rank {settings.rank}" if settings.rank else f"{settings.energy:.0%} energy"
        elif method == "2:4+recovery":
            prune_rep, run, refit_fid = _prune_and_recover(
                settings, base, model, tokenizer, pooling, train, ref, log
            )
            reports += [prune_rep, run]
            note = (
                f"mean cosine {refit_fid.mean_cosine:.4f} after the layer-wise re-fit, then "
                f"{run.steps} distillation steps in {run.seconds:.0f} s"
            )
        elif method == "structured":
            reports.append(
                _structured(settings, base, model, tokenizer, pooling, train, calib, False)
            )
        elif method in STRUCTURED:
            if recovered is None:
                recovered = copy.deepcopy(base)
                recovered_report = _structured(settings, base, recovered, tokenizer, pooling, train,
                                               calib, True)  # fmt: skip
            model = copy.deepcopy(recovered)
            reports.append(recovered_report)
            if method == "structured+recovery+w8a8":
                reports.append(quantize(model, "w8a8"))
        if method in STRUCTURED:
            r = reports[0]
            kept = r.notes["kept_layers"]
            note = f"{r.layers[kept[0]].action}, layers {kept} of {len(r.layers)} kept"
            for run in r.notes.get("recovery", []):
                note += f", then {run['steps']} distillation steps in {run['seconds']:.0f} s"
        if method not in BASELINES and not reports:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
        model.eval()
        out[method] = (model, reports, note)
        log(f"  {LABELS[method]:<20} built in {time.perf_counter() - t0:.1f} s")
    return out


def measure_latency(
    models: dict[str, nn.Module], shapes, reps: int, vocab: int, seed: int = 0
) -> dict:
    """Median ms per model and shape, the models timed in turn so they share the machine's state."""
    g = torch.Generator().manual_seed(seed)
    result = {name: {} for name in models}
    for b, t in shapes:
        ids = torch.randint(1000, max(1001, vocab), (b, t), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        times = {name: [] for name in models}
        with torch.inference_mode():
            for m in models.values():  # warm-up
                m(**inputs)
            for _ in range(reps):
                for name, m in models.items():
                    times[name].append(
                        time_fn(lambda i, m=m, x=inputs: m(**x), warmup=0, reps=1, min_time_s=0.0)
                    )
        for name, ts in times.items():
            result[name][f"{b}x{t}"] = sorted(ts)[len(ts) // 2]
    return result


def format_table(rows: list[Row]) -> str:
    shapes = list(rows[0].latency_ms)
    head = ["method", "size MB", "x smaller"]
    for s in shapes:
        head += [f"{s} ms", "vs fp32"]
    head += ["mean cos", "min cos", "NN agree"]
    base_mb = rows[0].size_mb
    body = []
    for r in rows:
        cells = [r.label, f"{r.size_mb:.1f}", f"{base_mb / r.size_mb:.2f}x"]
        for s in shapes:
            cells += [f"{r.latency_ms[s]:.2f}", f"{r.speedup[s]:.2f}x"]
        f = r.fidelity
        cells += [f"{f['mean_cosine']:.4f}", f"{f['min_cosine']:.4f}", f"{f['nn_agreement']:.1%}"]
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def plot(rows: list[Row], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in rows]
    shapes = list(rows[0].latency_ms)
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(rows) + 1.8), sharey=True)
    y = range(len(rows))
    axes[0].barh(y, [r.size_mb for r in rows], color="tab:blue")
    axes[0].set_xlabel("size (MB)")
    for j, s in enumerate(shapes):
        axes[1].barh(
            [i + 0.4 * j - 0.2 for i in y], [r.speedup[s] for r in rows], height=0.4, label=s
        )
    axes[1].axvline(1.0, color="k", lw=0.8)
    axes[1].set_xlabel("speedup vs fp32")
    axes[1].legend(fontsize=7)
    axes[2].barh(y, [r.fidelity["mean_cosine"] for r in rows], color="tab:green")
    axes[2].set_xlim(min(0.5, min(r.fidelity["mean_cosine"] for r in rows) - 0.05), 1.0)
    axes[2].set_xlabel("mean cosine to fp32")
    axes[0].set_yticks(list(y), labels)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(settings: Settings, log=print) -> dict:
    torch.manual_seed(settings.seed)
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if settings.save_method is None:
        settings.save_method = next((m for m in settings.methods if m not in BASELINES), None)
    elif settings.save_method in BASELINES or settings.save_method not in settings.methods:
        raise ValueError(
            f"--save {settings.save_method} is not among the llmkern methods run ({', '.join(settings.methods)})"
        )
    if {"2:4+recovery", "structured+recovery", "structured+recovery+w8a8"} & set(settings.methods):
        texts.news_corpus()  # a missing corpus fails now, not after minutes of work
    if set(STRUCTURED) & set(settings.methods):  # fail now too, not after the other methods
        _check_ratio("--structured-ffn", settings.structured_ffn)
        _check_ratio("--structured-heads", settings.structured_heads)
        if settings.structured_layers < 0 or not settings.structured_seconds > 0:
            raise ValueError("--structured-layers must be >= 0 and --structured-seconds > 0")
    methods = ("fp32",) + tuple(m for m in settings.methods if m != "fp32")
    settings.methods = methods
    t_start = time.perf_counter()
    name = settings.model_dir or "all-MiniLM-L6-v2 (packaged)"
    log(f"llmkern compress: {name}")
    base, tokenizer, pooling = hf.load_backbone(settings.model_dir)
    log(
        f"  loaded {type(base).__name__}: {sum(p.numel() for p in base.parameters()) / 1e6:.1f} M parameters"
    )
    ref = hf.embed(base, tokenizer, texts.SENTENCES, pooling)  # fidelity reference
    variants = build_variants(settings, base, tokenizer, pooling, ref, log)

    log(
        f"  measuring fidelity on {len(texts.SENTENCES)} sentences and latency at {settings.shapes}"
    )
    fid = {
        m: fidelity(ref, hf.embed(v[0], tokenizer, texts.SENTENCES, pooling))
        for m, v in variants.items()
    }
    vocab = getattr(getattr(base, "config", None), "vocab_size", 30000)
    lat = measure_latency(
        {m: v[0] for m, v in variants.items()}, settings.shapes, settings.reps, vocab, settings.seed
    )

    rows = []
    for m, (model, _, note) in variants.items():
        speed = {s: lat["fp32"][s] / lat[m][s] for s in lat[m]}
        rows.append(
            Row(m, LABELS[m], count_bytes(model) / 2**20, lat[m], speed, fid[m].as_dict(), note)
        )
    table = format_table(rows)
    log("")
    log(table)
    for r in rows:
        if r.method == "2:4+recovery":
            before = fid.get("2:4")
            before_txt = f"{before.mean_cosine:.4f} -> " if before else ""
            log(
                f"  2:4 + recovery: mean cosine {before_txt}{r.fidelity['mean_cosine']:.4f} ({r.note})"
            )
        elif r.note:
            log(f"  {r.label}: {r.note}")

    os.makedirs(settings.out_dir, exist_ok=True)
    saved = None
    if settings.save_method:
        saved = os.path.join(
            settings.out_dir, f"model-{settings.save_method.replace(':', '').replace('+', '-')}"
        )
        model = variants[settings.save_method][0]
        save(model, saved)
        again = load(saved)
        same = torch.equal(hf.embed(again, tokenizer, texts.SENTENCES[:8], pooling),
                           hf.embed(model, tokenizer, texts.SENTENCES[:8], pooling))  # fmt: skip
        log(
            f"  saved {LABELS[settings.save_method]} model to {saved} (reloaded: {'identical' if same else 'DIFFERENT'} outputs)"
        )
        if not same:
            raise RuntimeError(f"the checkpoint {saved} does not reproduce the model's outputs")
    result = {
        "meta": {
            **environment(),
            "model": name,
            "quick": settings.quick,
            "seconds": time.perf_counter() - t_start,
        },
        "rows": [r.__dict__ for r in rows],
        "reports": {
            m: [r.__dict__ if not hasattr(r, "as_dict") else r.as_dict() for r in v[1]]
            for m, v in variants.items()
        },
        "saved_model": saved,
    }
    json_path = os.path.join(settings.out_dir, "report.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    png = os.path.join(settings.out_dir, "compress.png")
    plot(rows, png, f"llmkern compress: {os.path.basename(os.path.normpath(name))}")
    log(f"  wrote {json_path} and {png} ({time.perf_counter() - t_start:.0f} s in all)")
    result["table"] = table
    return result
