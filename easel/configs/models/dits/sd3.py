"""The Stable Diffusion 3 / 3.5 DiT config: the fields of Diffusers' `SD3Transformer2DModel` with its defaults."""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class SD3DitConfig(DiTConfig):
    """Architecture of the SD3 MMDiT; checkpoints override most defaults.

    SD3-medium: 24 layers of 24 heads x 64, `pos_embed_max_size` 192. SD3.5-large: 38 layers of 38 heads, qk_norm
    "rms_norm". SD3.5-medium: 24 layers, qk_norm "rms_norm", `dual_attention_layers` 0..12 (an extra image-only
    self-attention in those blocks), `pos_embed_max_size` 384.
    """

    sample_size: int = 128
    patch_size: int = 2
    in_channels: int = 16
    num_layers: int = 18
    attention_head_dim: int = 64
    num_attention_heads: int = 18
    joint_attention_dim: int = 4096
    caption_projection_dim: int = 1152
    pooled_projection_dim: int = 2048
    out_channels: int | None = 16
    pos_embed_max_size: int | None = 96
    dual_attention_layers: tuple[int, ...] = ()
    qk_norm: str | None = None

    def __post_init__(self) -> None:
        # config.json stores the list as a JSON array.
        self.dual_attention_layers = tuple(self.dual_attention_layers)
