"""Tiny models shared by several test modules."""

import torch
from torch import nn


class TinyLM(nn.Module):
    """Token ids (below ``v``) -> logits over ``v`` classes: an embedding and a head."""

    def __init__(self, seed=0, v=20):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(v, 8)
        self.out = nn.Linear(8, v)

    def forward(self, input_ids):
        return self.out(self.emb(input_ids))
