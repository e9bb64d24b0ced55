"""Rotary position embeddings in FLUX's interleaved-pair layout: channels (2i, 2i+1) rotate together."""

from collections.abc import Sequence

import torch

# Devices without float64 kernels; there the angles are computed in float32.
_NO_FLOAT64_DEVICES = frozenset({"mps", "npu", "neuron"})


def rope_frequencies(dim: int, positions: torch.Tensor, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (L, dim) float32, of positions (L,) times dim/2 frequencies, each repeated twice."""
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    # Large positions times high frequencies lose angle precision in float32, so compute in float64 (as the
    # reference FLUX code does) and round only the final cos/sin.
    dtype = torch.float32 if positions.device.type in _NO_FLOAT64_DEVICES else torch.float64
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=dtype, device=positions.device) / dim))  # (dim/2,)
    angles = torch.outer(positions, inv_freq)  # (L, dim/2)
    cos = angles.cos().repeat_interleave(2, dim=1).float()  # (L, dim)
    sin = angles.sin().repeat_interleave(2, dim=1).float()  # (L, dim)
    return cos, sin


def multi_axis_rope_frequencies(
    position_ids: torch.Tensor, axes_dims: Sequence[int], theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (L, sum(axes_dims)), of position ids (L, n_axes): one band per axis, concatenated."""
    if position_ids.shape[-1] != len(axes_dims):
        raise ValueError(f"position ids have {position_ids.shape[-1]} axes but axes_dims has {len(axes_dims)}")
    positions = position_ids.float()
    bands = [rope_frequencies(dim, positions[:, axis], theta) for axis, dim in enumerate(axes_dims)]
    cos = torch.cat([cos for cos, _ in bands], dim=-1)
    sin = torch.cat([sin for _, sin in bands], dim=-1)
    return cos, sin


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates each channel pair (2i, 2i+1) of x (B, L, H, D) by the angle whose cos/sin are given.

    cos/sin are (L, D), shared by the batch, or (B, L, D) where samples sit at different positions.
    """
    return rotate_qk(x, None, cos, sin)[0]


def rotate_qk(
    query: torch.Tensor, key: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`apply_rotary_emb` of query and key (either (B, L, H, D)) by the same angles, which are prepared once."""
    cos, sin = (t[None, :, None, :] if t.ndim == 2 else t[:, :, None, :] for t in (cos, sin))  # broadcast over heads
    if torch.compiler.is_compiling():
        # Inductor generates no code for complex ops; the real form fuses into one kernel there.
        def rotate(x: torch.Tensor) -> torch.Tensor:
            real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, L, H, D/2) each
            rotated = torch.stack([-imag, real], dim=-1).flatten(-2)  # (B, L, H, D)
            return (x.float() * cos + rotated.float() * sin).to(x.dtype)

    else:
        # Eagerly, the pair (x_2i, x_2i+1) times e^{i angle} as one complex multiply: the same products and sums as
        # the real form x * cos + (-x_2i+1, x_2i) * sin (bitwise, in float32), in one pass over x instead of five.
        angles = torch.complex(cos[..., ::2], sin[..., ::2])  # (1 or B, L, 1, D/2)

        def rotate(x: torch.Tensor) -> torch.Tensor:
            # In float32 so half-precision queries and keys are rotated without extra rounding.
            pairs = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))  # (B, L, H, D/2)
            return torch.view_as_real(pairs * angles).flatten(-2).to(x.dtype)

    return rotate(query), None if key is None else rotate(key)


def rotate_half_qk(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary embedding in the half-split layout, where channel i pairs with channel i + D/2 (GLM-Image, CogView4)
    rather than with its neighbour as in `rotate_qk`: query and key (B, L, H, D), cos/sin (L, D), each angle in both
    halves."""
    cos, sin = (t[None, :, None, :] for t in (cos, sin))  # broadcast over batch and heads

    def rotate(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)

    return rotate(query), rotate(key)


def split_rope(
    freqs_cis: tuple[torch.Tensor, torch.Tensor], first: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(cos, sin) of a joint sequence, (..., L, D) each, as the tables of its first `first` positions and the rest:
    a joint attention rotates each stream with its own projections' output before joining them."""
    cos, sin = freqs_cis
    return (cos[..., :first, :], sin[..., :first, :]), (cos[..., first:, :], sin[..., first:, :])


def polar_rope_frequencies(
    position_ids: torch.Tensor, axes_dims: Sequence[int], theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (..., sum(axes_dims)), of integer position ids (..., n_axes), rounded as polar tables are.

    Lumina-style models (Z-Image) precompute `torch.polar(1, angles.float())`: the angles are computed in float64
    but rounded to float32 before cos/sin. At positions in the thousands that rounding moves cos/sin by up to about
    1e-4, so parity with them needs the same rounding, not `multi_axis_rope_frequencies`' float64 cos/sin.
    Any leading dimensions are kept, e.g. (B, L, n_axes) for per-sample positions gives (B, L, D).
    """
    if position_ids.shape[-1] != len(axes_dims):
        raise ValueError(f"position ids have {position_ids.shape[-1]} axes but axes_dims has {len(axes_dims)}")
    dtype = torch.float32 if position_ids.device.type in _NO_FLOAT64_DEVICES else torch.float64
    cos_bands, sin_bands = [], []
    for axis, dim in enumerate(axes_dims):
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=dtype, device=position_ids.device) / dim))
        angles = (position_ids[..., axis, None].to(dtype) * inv_freq).float()  # (..., dim/2), float32 angles
        cos_bands.append(angles.cos().repeat_interleave(2, dim=-1))
        sin_bands.append(angles.sin().repeat_interleave(2, dim=-1))
    return torch.cat(cos_bands, dim=-1), torch.cat(sin_bands, dim=-1)
