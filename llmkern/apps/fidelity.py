"""How close a compressed model's sentence embeddings stay to the float model's."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Fidelity:
    mean_cosine: float  # mean over sentences of cos(e_compressed, e_float)
    min_cosine: float
    nn_agreement: float  # fraction of sentences whose nearest neighbour is the same in both

    def as_dict(self) -> dict:
        return {
            "mean_cosine": self.mean_cosine,
            "min_cosine": self.min_cosine,
            "nn_agreement": self.nn_agreement,
        }


def nearest_neighbours(emb: torch.Tensor) -> torch.Tensor:
    """Index of each row's most similar other row (cosine; rows are L2-normalised)."""
    sim = emb @ emb.T
    sim.fill_diagonal_(float("-inf"))
    return sim.argmax(1)


def fidelity(reference: torch.Tensor, other: torch.Tensor) -> Fidelity:
    """Compare embeddings [S, H] (L2-normalised) of the same sentences from two models."""
    if reference.shape != other.shape or reference.dim() != 2 or reference.shape[0] < 2:
        raise ValueError(
            f"need two [S >= 2, H] embeddings of one shape, got {tuple(reference.shape)} and {tuple(other.shape)}"
        )
    cos = torch.nn.functional.cosine_similarity(reference.float(), other.float(), dim=1)
    agree = (
        (nearest_neighbours(reference.float()) == nearest_neighbours(other.float())).float().mean()
    )
    return Fidelity(float(cos.mean()), float(cos.min()), float(agree))
