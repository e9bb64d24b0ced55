"""The Qwen-Image DiT config: the fields of Diffusers' `QwenImageTransformer2DModel` with its defaults."""

import dataclasses

from easel.configs.models.dits.base import DiTConfig


@dataclasses.dataclass
class QwenImageDitConfig(DiTConfig):
    """Architecture of the Qwen-Image MMDiT (60 dual-stream blocks of width 3072 at full size).

    The same class serves every Qwen-Image checkpoint; three flags tell the variants apart:
    - `zero_cond_t` (Qwen-Image-Edit-2511): condition-image tokens are modulated as if at timestep 0;
    - `use_additional_t_cond` (Qwen-Image-Layered): a learned embedding of an extra integer condition is added to
      the timestep embedding;
    - `use_layer3d_rope` (Qwen-Image-Layered): the frame axis of the rotary embedding numbers the layers, and the
      last image (the input to decompose) sits at frame -1.
    """

    patch_size: int = 2
    in_channels: int = 64
    out_channels: int | None = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    # Diffusers keeps this argument but builds no guidance embedder; every Qwen-Image checkpoint sets it False.
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    zero_cond_t: bool = False
    use_additional_t_cond: bool = False
    use_layer3d_rope: bool = False

    def __post_init__(self) -> None:
        # config.json stores lists; keep the tuple the annotation promises.
        self.axes_dims_rope = tuple(self.axes_dims_rope)
