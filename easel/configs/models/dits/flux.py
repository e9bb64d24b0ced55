"""The FLUX.1 DiT config: the fields of Diffusers' `FluxTransformer2DModel` with its defaults (FLUX.1-dev)."""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class FluxDitConfig(DiTConfig):
    """Architecture of the FLUX.1 transformer (19 double-stream and 38 single-stream blocks at full size)."""

    patch_size: int = 1
    in_channels: int = 64
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
