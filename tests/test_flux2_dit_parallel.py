"""FLUX.2's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process: its
fused single-stream projection shards each of its five segments."""

import dataclasses

import torch

from easel.configs.models.dits.flux2 import Flux2DitConfig
from easel.runtime.models.dits.flux2 import Flux2Transformer2DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

# 4 heads so Ulysses 2 x TP 2 has a head per rank; odd lengths: 7 text and 5 x 3 image tokens.
CONFIG = Flux2DitConfig(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=4,
    joint_attention_dim=24,
    timestep_guidance_channels=32,
    axes_dims_rope=(4, 4, 4, 4),
    guidance_embeds=True,
)
LENGTHS = {"even": (8, 4, 4), "odd": (7, 5, 3)}  # text tokens, image rows, image columns


@dataclasses.dataclass
class Flux2Case(ParallelDiTCase):
    def inputs(self, variant: str) -> dict:
        text_len, rows, cols = LENGTHS[variant]
        generator = torch.Generator().manual_seed(1)
        ids = torch.zeros(rows, cols, 4)
        ids[..., 1], ids[..., 2] = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
        text_ids = torch.zeros(text_len, 4)
        text_ids[:, 3] = torch.arange(text_len)
        return dict(
            hidden_states=torch.randn(2, rows * cols, 16, generator=generator),
            encoder_hidden_states=torch.randn(2, text_len, 24, generator=generator),
            timestep=torch.tensor([0.3, 0.85]),
            guidance=torch.tensor([4.0, 1.5]),
            position_ids=torch.cat([text_ids, ids.reshape(-1, 4)]),
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        position_ids = inputs.pop("position_ids")
        return model(**inputs, freqs_cis=model.rotary_emb(position_ids))


class TestFlux2Parallel(ParallelDiTMixin):
    dit = Flux2Case(Flux2Transformer2DModel, CONFIG)
