"""Conditioning embeddings: the sinusoidal timestep embedding and the two-layer MLP that projects it."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000, scale: float = 1.0) -> torch.Tensor:
    """Sinusoidal embedding (N, dim), float32, of t (N,): cos half, sin half; freqs max_period^(-2i/dim).

    scale multiplies the angles after t times the frequencies, as Diffusers' `Timesteps(scale=...)` does (Qwen-Image
    takes sigma and scales by 1000 there); scaling t first would round the angles differently.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t[:, None].float() * torch.exp(exponent)[None, :]  # (N, dim/2)
    if scale != 1.0:
        angles = scale * angles
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (N, dim)


class MLPEmbedder(nn.Module):
    """linear_1 -> SiLU -> linear_2, as Diffusers' TimestepEmbedding and PixArtAlphaTextProjection."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim, bias=bias)
        self.linear_2 = nn.Linear(hidden_dim, out_dim or hidden_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


# Devices without float64 kernels; there the position table is computed in float32.
_NO_FLOAT64_DEVICES = frozenset({"mps", "npu", "neuron"})


def sincos_2d_position_embedding(
    dim: int,
    height: int,
    width: int,
    base_size: int,
    interpolation_scale: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fixed 2D sin-cos position table (height * width, dim), float32, tokens in row-major order.

    The first half of each row encodes the token's column, the second half its row, each as [sin | cos] over dim/4
    frequencies 10000^(-4i/dim) (the PixArt / SD3 layout). Coordinates are rescaled so the grid spans `base_size`
    units whatever its size, as in Diffusers' `get_2d_sincos_pos_embed`.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embeddings need a width divisible by 4, got {dim}")
    device = torch.device(device) if device is not None else torch.empty(0).device
    dtype = torch.float32 if device.type in _NO_FLOAT64_DEVICES else torch.float64
    # Coordinates in float32 and frequencies in float64, as the reference computes them; one rounding at the end.
    rows = torch.arange(height, dtype=torch.float32, device=device) / (height / base_size) / interpolation_scale
    cols = torch.arange(width, dtype=torch.float32, device=device) / (width / base_size) / interpolation_scale
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=dtype, device=device) / quarter)  # (dim/4,)

    def one_axis(positions: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(positions.to(dtype), omega)  # (H * W, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (H * W, dim/2)

    col_of_token = cols[None, :].expand(height, width).reshape(-1)
    row_of_token = rows[:, None].expand(height, width).reshape(-1)
    return torch.cat([one_axis(col_of_token), one_axis(row_of_token)], dim=1).float()  # (H * W, dim)
