"""The Wan DiT config: the fields of Diffusers' `WanTransformer3DModel` with its defaults (Wan2.1-T2V-14B)."""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class WanDitConfig(DiTConfig):
    """Architecture of the Wan2.1 / Wan2.2 video transformer (40 blocks of width 5120 at full size).

    Known checkpoints: Wan2.1-T2V-1.3B (12 heads, 30 layers, ffn 8960), Wan2.1-T2V-14B / Wan2.2-A14B experts (the
    defaults), Wan2.1-I2V-14B (`image_dim` 1280 and `added_kv_proj_dim` 5120, in_channels 36), Wan2.2-TI2V-5B
    (24 heads, 30 layers, ffn 14336, 48 latent channels).
    """

    patch_size: tuple[int, ...] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    # I2V: width of the CLIP image tokens, and of the extra key/value projections that attend to them.
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    # FLF2V: a learned position table over the 2 x 257 tokens of the first and last frames' CLIP embeddings.
    pos_embed_seq_len: int | None = None

    def __post_init__(self) -> None:
        self.patch_size = tuple(self.patch_size)
