"""The DiT feed-forward block, column- then row-parallel so tensor parallelism splits its hidden width."""

import torch
import torch.nn.functional as F
from torch import nn

from easel.runtime.layers import triton_kernels
from easel.runtime.layers.kernel_backend import use_triton
from easel.runtime.layers.linear import ColumnParallelLinear, RowParallelLinear


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh-approximated GELU, the DiT MLPs' activation."""
    if use_triton(x):
        return triton_kernels.gelu_tanh(x)
    return F.gelu(x, approximate="tanh")


class TanhGELUProjection(nn.Module):
    """A linear layer followed by the tanh-approximated GELU."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.proj = ColumnParallelLinear(dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(self.proj(x))


class FeedForward(nn.Module):
    """The transformer MLP: dim -> 4 dim -> tanh-GELU -> dim."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden_dim = int(dim * mlp_ratio)
        # Index-style names mirror Diffusers' checkpoint keys (`net.0.proj`, `net.2`); index 1 is its dropout.
        self.net = nn.Sequential(TanhGELUProjection(dim, hidden_dim), nn.Identity(), RowParallelLinear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
