"""The HunyuanVideo-1.5 DiT config: the fields of Diffusers' `HunyuanVideo15Transformer3DModel` with its defaults."""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class HunyuanVideo15DitConfig(DiTConfig):
    """Architecture of the HunyuanVideo-1.5 transformer (54 double-stream blocks of 16 heads x 128 at full size)."""

    in_channels: int = 65  # noisy latents, the first-frame latents and a mask (text-to-video: zeros)
    out_channels: int | None = 32
    num_attention_heads: int = 16
    attention_head_dim: int = 128
    num_layers: int = 54
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 1
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    text_embed_dim: int = 3584  # Qwen2.5-VL's width
    text_embed_2_dim: int = 1472  # ByT5's width
    image_embed_dim: int = 1152  # SigLIP's width
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, ...] = (16, 56, 56)
    target_size: int = 640
    task_type: str = "i2v"
    use_meanflow: bool = False
