"""Normalization layers: RMSNorm for qk-norm and the parameter-free LayerNorm that adaLN modulates."""

import torch
import torch.nn.functional as F
from torch import nn

from easel.runtime.distributed.communication import all_reduce
from easel.runtime.distributed.parallel_state import get_tp_world_size
from easel.runtime.layers import triton_kernels
from easel.runtime.layers.kernel_backend import use_triton
from easel.runtime.layers.linear import _shard_dim, _split_width
from easel.runtime.layers.rotary import rotate_qk


class RMSNorm(nn.Module):
    """RMS normalization over the last dimension with a learned scale; numerically torch.nn.RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is what torch.nn.RMSNorm (and so Diffusers' FLUX qk-norm) runs; for half-precision
        # inputs it normalizes and applies the weight in float32, then rounds once to x's dtype.
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)


class RMSNormCastBeforeWeight(RMSNorm):
    """RMSNorm that, for half-precision weights, rounds the normalized input to their dtype before scaling by them.

    That is Diffusers' own `RMSNorm` (Z-Image's norms and qk-norms): normalize in float32, round, then multiply in
    half precision, two roundings where `RMSNorm` has one. Same numbers as `RMSNorm` in float32; in bf16 it keeps
    such models bitwise equal to Diffusers instead of about one ulp apart.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        return F.rms_norm(x.float(), (self.dim,), eps=self.eps).to(self.weight.dtype) * self.weight


class ParallelRMSNorm(RMSNorm):
    """RMSNorm over features that tensor parallelism shards, such as a qk-norm across all heads when the heads are
    split across TP ranks: each rank holds its features' slice of the scale, and the sum of squares is all-reduced
    over the TP group, so every rank normalizes by the whole width's mean square. At TP size 1 it is `RMSNorm`, bit
    for bit. The slice is the one a `ColumnParallelLinear` (without segments) of the same width gives its outputs.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        _split_width(dim, None, "normalized")
        super().__init__(dim // get_tp_world_size(), eps)
        self.full_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_tp_world_size() == 1:
            return super().forward(x)
        # As F.rms_norm does: in float32, the weight applied before the one rounding to x's dtype.
        x32 = x.float()
        mean_square = all_reduce(x32.square().sum(-1, keepdim=True), "tp") / self.full_dim
        return (x32 * torch.rsqrt(mean_square + self.eps) * self.weight.float()).to(x.dtype)

    def shard_tensor(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the full checkpoint tensor `name` (the "weight")."""
        return _shard_dim(full, 0, (self.full_dim,)) if get_tp_world_size() > 1 else full[...]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The adaLN modulation of normalized tokens x (B, L, D) by per-sample shift and scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def gated_residual(residual: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero's block output `residual + gate * branch` in residual's dtype: residual and branch (B, L, D), gate
    (B, D) per sample or (B, 1 or L, D); a float32 gate (Wan's) makes the sum float32 before the one rounding."""
    if use_triton(residual):
        return triton_kernels.gated_residual(residual, gate, branch)
    gate = gate[:, None] if gate.ndim == 2 else gate  # (B, 1 or L, D)
    return (residual + gate * branch).to(residual.dtype)


class LayerNormScaleShift(nn.Module):
    """LayerNorm without affine weights, then the adaLN modulation `x * (1 + scale) + shift`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if use_triton(x):
            return triton_kernels.layer_norm_scale_shift(x, shift, scale, self.eps)
        return modulate(F.layer_norm(x, (self.dim,), eps=self.eps), shift, scale)


class RMSNormScaleShift(RMSNorm):
    """RMSNorm (with its learned scale), then the adaLN modulation `x * (1 + scale) + shift`."""

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if use_triton(x):
            return triton_kernels.rms_norm_scale_shift(x, self.weight, shift, scale, self.eps)
        return modulate(super().forward(x), shift, scale)


def apply_qk_norm(
    query: torch.Tensor, key: torch.Tensor, query_norm: nn.Module, key_norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalizes each head of query and key, (B, L, H, D), over D; keeps attention logits bounded."""
    return query_norm(query), key_norm(key)


def apply_qk_norm_rope(
    query: torch.Tensor,
    key: torch.Tensor,
    query_norm: RMSNorm | None,
    key_norm: RMSNorm | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """qk-norm of each head of query and key (B, L, H, D) over D (when norms are given), then the interleaved rotary
    embedding by cos/sin (L, D) or (B, L, D): one pass over each with the Triton backend."""
    if query_norm is not None and use_triton(query) and query_norm.eps == key_norm.eps:
        return triton_kernels.qk_norm_rope(query, key, query_norm.weight, key_norm.weight, cos, sin, query_norm.eps)
    if query_norm is not None:
        query, key = apply_qk_norm(query, key, query_norm, key_norm)
    return rotate_qk(query, key, cos, sin)


class AdaLNContinuous(nn.Module):
    """adaLN without gates: a LayerNorm modulated by the conditioning (the DiTs' final layer)."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim, bias=bias)
        self.norm = LayerNormScaleShift(dim, eps=eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # Laid out (scale, shift), the reverse of adaLN-Zero's (shift, scale), as in Diffusers' checkpoints.
        scale, shift = self.linear(F.silu(cond).to(x.dtype)).chunk(2, dim=1)
        return self.norm(x, shift, scale)


FP16_MAX = 65504.0


def clip_fp16(x: torch.Tensor) -> torch.Tensor:
    """Clips a residual stream to fp16's range, as Diffusers does: DiT activations can overflow fp16."""
    return x.clip(-FP16_MAX, FP16_MAX) if x.dtype == torch.float16 else x
