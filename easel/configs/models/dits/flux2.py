"""The FLUX.2 DiT config: the fields of Diffusers' `Flux2Transformer2DModel` with its defaults (FLUX.2-dev)."""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class Flux2DitConfig(DiTConfig):
    """Architecture of the FLUX.2 transformer (8 double-stream and 48 single-stream blocks in FLUX.2-dev)."""

    patch_size: int = 1
    in_channels: int = 128
    num_layers: int = 8
    num_single_layers: int = 48
    attention_head_dim: int = 128
    num_attention_heads: int = 48
    joint_attention_dim: int = 15360
    timestep_guidance_channels: int = 256
    mlp_ratio: float = 3.0
    axes_dims_rope: tuple[int, ...] = (32, 32, 32, 32)
    rope_theta: float = 2000.0
    eps: float = 1e-6
    guidance_embeds: bool = True
