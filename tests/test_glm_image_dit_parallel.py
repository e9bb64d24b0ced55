"""GLM-Image's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process."""

import dataclasses

import torch

from easel.configs.models.dits.glm_image import GlmImageDitConfig
from easel.runtime.models.dits.glm_image import GlmImageTransformer2DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

# 4 heads so Ulysses 2 x TP 2 has a head per rank; odd lengths: 7 text and 5 x 3 image tokens.
CONFIG = GlmImageDitConfig(
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=4,
    text_embed_dim=12,
    time_embed_dim=16,
    condition_dim=8,
    prior_vq_quantizer_codebook_size=32,
)
LENGTHS = {"even": (8, 4, 4), "odd": (7, 5, 3)}  # text tokens, patch rows, patch columns


@dataclasses.dataclass
class GlmImageCase(ParallelDiTCase):
    def inputs(self, variant: str) -> dict:
        text_len, rows, cols = LENGTHS[variant]
        generator = torch.Generator().manual_seed(1)
        return dict(
            hidden_states=torch.randn(2, 4, 2 * rows, 2 * cols, generator=generator),
            encoder_hidden_states=torch.randn(2, text_len, 12, generator=generator),
            prior_token_id=torch.randint(0, 32, (2, rows * cols), generator=generator),
            prior_token_drop=torch.tensor([[False], [True]]).expand(2, rows * cols),
            timestep=torch.tensor([300.0, 850.0]),
            target_size=torch.tensor([[64.0, 96.0], [64.0, 96.0]]),
            crop_coords=torch.zeros(2, 2),
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        height, width = inputs["hidden_states"].shape[-2:]
        return model(**inputs, freqs_cis=model.rotary_emb(height, width))


class TestGlmImageParallel(ParallelDiTMixin):
    dit = GlmImageCase(GlmImageTransformer2DModel, CONFIG)
