"""FLUX's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process."""

import dataclasses

import torch

from easel.configs.models.dits.flux import FluxDitConfig
from easel.runtime.models.dits.flux import FluxTransformer2DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

# 4 heads so Ulysses 2 x TP 2 has a head per rank; odd lengths: 7 text and 5 x 3 image tokens.
CONFIG = FluxDitConfig(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=4,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
    guidance_embeds=True,
)
LENGTHS = {"even": (8, 4, 4), "odd": (7, 5, 3)}  # text tokens, image rows, image columns


@dataclasses.dataclass
class FluxCase(ParallelDiTCase):
    def inputs(self, variant: str) -> dict:
        text_len, rows, cols = LENGTHS[variant]
        generator = torch.Generator().manual_seed(1)
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1], ids[..., 2] = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
        return dict(
            hidden_states=torch.randn(2, rows * cols, 16, generator=generator),
            encoder_hidden_states=torch.randn(2, text_len, 32, generator=generator),
            pooled_projections=torch.randn(2, 32, generator=generator),
            timestep=torch.tensor([0.3, 0.85]),
            guidance=torch.tensor([3.5, 1.5]),
            position_ids=torch.cat([torch.zeros(text_len, 3), ids.reshape(-1, 3)]),
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        position_ids = inputs.pop("position_ids")
        return model(**inputs, freqs_cis=model.rotary_emb(position_ids))


class TestFluxParallel(ParallelDiTMixin):
    dit = FluxCase(FluxTransformer2DModel, CONFIG)
