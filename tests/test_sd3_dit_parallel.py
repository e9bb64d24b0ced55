"""SD3.5's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process: the joint
attention, the last block's pre-only text stream, the dual (image-only) attention and a skip-layer pass."""

import dataclasses

import torch

from easel.configs.models.dits.sd3 import SD3DitConfig
from easel.runtime.models.dits.sd3 import SD3Transformer2DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

# SD3.5-medium-like: qk RMSNorm and dual attention in the first two of three blocks; 4 heads so Ulysses 2 x TP 2 has
# a head per rank.
CONFIG = SD3DitConfig(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=4,
    joint_attention_dim=24,
    caption_projection_dim=32,
    pooled_projection_dim=20,
    out_channels=4,
    pos_embed_max_size=8,
    qk_norm="rms_norm",
    dual_attention_layers=(0, 1),
)
# Text tokens, latent rows, latent columns: "even" a 2 x 4 patch grid, "odd" 7 text and 3 x 5 image tokens.
LENGTHS = {"even": (8, 4, 8), "odd": (7, 6, 10)}
SKIP_LAYERS = [1]  # a dual-attention block, as skip-layer guidance's second pass leaves out


@dataclasses.dataclass
class SD3Case(ParallelDiTCase):
    def inputs(self, variant: str) -> dict:
        text_len, height, width = LENGTHS[variant]
        generator = torch.Generator().manual_seed(1)
        return dict(
            hidden_states=torch.randn(2, 4, height, width, generator=generator),
            encoder_hidden_states=torch.randn(2, text_len, 24, generator=generator),
            pooled_projections=torch.randn(2, 20, generator=generator),
            timestep=torch.tensor([999.0, 312.5]),
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        """The full pass and the skip-layer pass, one after the other."""
        return torch.cat([model(**inputs), model(**inputs, skip_layers=SKIP_LAYERS)])


class TestSD3Parallel(ParallelDiTMixin):
    dit = SD3Case(SD3Transformer2DModel, CONFIG)
