"""Wan's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process: T2V, I2V
(CLIP image tokens in cross-attention) and TI2V (one timestep per token)."""

import dataclasses

import torch

from easel.configs.models.dits.wanvideo import WanDitConfig
from easel.runtime.models.dits.wanvideo import WanTransformer3DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

# 4 heads so Ulysses 2 x TP 2 has a head per rank; ffn_dim and the image MLP's width divide by TP 2.
T2V = WanDitConfig(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=40,
    num_layers=2,
)
# I2V: the extra key/value projections read the image tokens at the model width (added_kv_proj_dim = 4 x 12).
I2V = dataclasses.replace(T2V, in_channels=36, image_dim=16, added_kv_proj_dim=48)
# Wan2.2-TI2V: 48 latent channels, and (WanCase.per_token_timestep) one timestep per token.
TI2V = dataclasses.replace(T2V, in_channels=48, out_channels=48, cross_attn_norm=False)
# Latent (frames, height, width): 3 x 2 x 4 = 24 video tokens divide by 2 and 4; 3 x 3 x 3 = 27 by neither.
GRIDS = {"even": (3, 4, 8), "odd": (3, 6, 6)}
TEXT_LEN, IMAGE_LEN = 7, 5  # whole on every rank, so any length


@dataclasses.dataclass
class WanCase(ParallelDiTCase):
    per_token_timestep: bool = False

    def inputs(self, variant: str) -> dict:
        frames, height, width = GRIDS[variant]
        generator = torch.Generator().manual_seed(1)
        config = self.config
        inputs = dict(
            hidden_states=torch.randn(2, config.in_channels, frames, height, width, generator=generator),
            timestep=torch.tensor([300.0, 857.0]),
            encoder_hidden_states=torch.randn(2, TEXT_LEN, config.text_dim, generator=generator),
        )
        if config.image_dim is not None:
            inputs["encoder_hidden_states_image"] = torch.randn(2, IMAGE_LEN, config.image_dim, generator=generator)
        if self.per_token_timestep:
            # As Wan2.2-TI2V's pipeline: 0 on the (clean) first frame's tokens, the sample's t elsewhere.
            first_frame = (height // 2) * (width // 2)
            timestep = inputs["timestep"][:, None].repeat(1, frames * first_frame)
            timestep[:, :first_frame] = 0.0
            inputs["timestep"] = timestep
        return inputs

    def forward(self, model, inputs: dict) -> torch.Tensor:
        _, _, frames, height, width = inputs["hidden_states"].shape
        return model(**inputs, freqs_cis=model.rotary_emb(frames, height, width))


class TestWanT2VParallel(ParallelDiTMixin):
    dit = WanCase(WanTransformer3DModel, T2V)


class TestWanI2VParallel(ParallelDiTMixin):
    dit = WanCase(WanTransformer3DModel, I2V)


class TestWanTI2VParallel(ParallelDiTMixin):
    dit = WanCase(WanTransformer3DModel, TI2V, per_token_timestep=True)
