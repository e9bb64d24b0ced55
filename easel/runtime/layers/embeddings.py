"""Conditioning embeddings: the sinusoidal timestep embedding and the two-layer MLP that projects it."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding (N, dim), float32, of t (N,): cos half, sin half; freqs max_period^(-2i/dim)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t[:, None].float() * torch.exp(exponent)[None, :]  # (N, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (N, dim)


class MLPEmbedder(nn.Module):
    """linear_1 -> SiLU -> linear_2, as Diffusers' TimestepEmbedding and PixArtAlphaTextProjection."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, out_dim or hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
