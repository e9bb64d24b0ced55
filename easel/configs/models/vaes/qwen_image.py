"""The Qwen-Image VAE config (`AutoencoderKLQwenImage`): 16 latent channels, 8x spatial compression, latents
normalized per channel by `latents_mean` / `latents_std`."""

import dataclasses

from easel.configs.models.vaes.wanvideo import WanVAEConfig

# Defaults of `Qwen/Qwen-Image/vae/config.json` (also Diffusers' `AutoencoderKLQwenImage` defaults).
QWEN_IMAGE_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
QWEN_IMAGE_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclasses.dataclass
class QwenImageVAEConfig(WanVAEConfig):
    """Wan's causal 3D VAE, used on single frames with Qwen-Image's latent statistics: latents are
    (B, z_dim, 1, H / 8, W / 8), normalized per channel (`scaling_factor` and `shift_factor` are unused).
    Qwen-Image-Layered's RGBA variant has `input_channels` 4."""

    input_channels: int = 3
    latents_mean: tuple[float, ...] = QWEN_IMAGE_LATENTS_MEAN
    latents_std: tuple[float, ...] = QWEN_IMAGE_LATENTS_STD
