"""Sentence embeddings of encoder backbones (hidden states pooled per sentence) and the
distillation loss that keeps a compressed encoder's embeddings close to the dense one's: the
default loss of prune_structure's recovery for encoders, and that of ``llmkern compress``.
"""

from __future__ import annotations

import torch


def backbone_inputs(batch: dict) -> dict:
    return {
        k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Sentence embeddings [B, H] from hidden states [B, T, H], L2-normalised."""
    if pooling == "cls":
        emb = hidden[:, 0]
    else:
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb.float(), dim=-1)


def _masked_nmse(a, b, m):
    """Squared error of ``a`` to ``b`` over the real tokens, relative to ``b``'s energy there."""
    return (((a - b) ** 2) * m).sum() / ((b**2) * m).sum().clamp(min=1e-9)


def recovery_loss(pooling: str, tau: float = 2.0, sim_scale: float = 20.0, layer_map=None):
    """Distillation loss from the dense teacher: llmkern's kd_loss over in-batch similarity
    distributions (each sentence's softmax over its cosine similarities to the others in the
    batch, teacher vs student, at temperature ``tau``) + 10 (1 - cosine) of the embeddings + the
    normalised MSE of every layer's hidden states (student layer i against teacher layer
    ``layer_map[i]`` when layers were removed). (Alternating with block-wise, teacher-forced
    steps measured slightly worse for the same time.)"""
    from llmkern.ops import kd_loss

    def loss_fn(student, teacher, batch):
        inputs = backbone_inputs(batch)
        mask = batch["attention_mask"]
        m = mask.unsqueeze(-1).float()
        with torch.no_grad():
            t = teacher(**inputs, output_hidden_states=True)
        s = student(**inputs, output_hidden_states=True)
        es, et = pool(s.last_hidden_state, mask, pooling), pool(t.last_hidden_state, mask, pooling)
        sim = kd_loss(sim_scale * es @ es.T, sim_scale * et @ et.T, temperature=tau)
        cos = (1.0 - (es * et).sum(1)).mean()
        t_states = t.hidden_states[1:]
        if layer_map is not None:
            t_states = [t_states[i] for i in layer_map]
        pairs = list(zip(s.hidden_states[1:], t_states, strict=True))
        hidden = sum(_masked_nmse(a, b, m) for a, b in pairs) / len(pairs)
        return sim + 10.0 * cos + hidden

    return loss_fn
