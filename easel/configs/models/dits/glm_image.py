"""The GLM-Image DiT config: the fields of Diffusers' `GlmImageTransformer2DModel` with its defaults."""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class GlmImageDitConfig(DiTConfig):
    """Architecture of the GLM-Image diffusion decoder (30 blocks of 64 heads x 40 at full size)."""

    patch_size: int = 2
    in_channels: int = 16
    out_channels: int | None = 16
    num_layers: int = 30
    attention_head_dim: int = 40
    num_attention_heads: int = 64
    text_embed_dim: int = 1472  # the glyph encoder's (ByT5's) width
    time_embed_dim: int = 512
    condition_dim: int = 256  # the sinusoid width of each of the size and crop conditions
    prior_vq_quantizer_codebook_size: int = 16384
