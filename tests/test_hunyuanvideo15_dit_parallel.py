"""HunyuanVideo-1.5's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process,
with padded prompts: the text mask travels with the text's shard."""

import dataclasses

import torch

from easel.configs.models.dits.hunyuanvideo15 import HunyuanVideo15DitConfig
from easel.runtime.models.dits.hunyuanvideo15 import HunyuanVideo15Transformer3DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

# 4 heads so Ulysses 2 x TP 2 has a head per rank.
CONFIG = HunyuanVideo15DitConfig(
    in_channels=9,
    out_channels=4,
    num_attention_heads=4,
    attention_head_dim=16,
    num_layers=2,
    num_refiner_layers=1,
    text_embed_dim=12,
    text_embed_2_dim=10,
    image_embed_dim=8,
    rope_axes_dim=(4, 6, 6),
)
# (prompt tokens, frames, rows, columns): "odd" leaves 7 prompt + 4 glyph + 5 image text tokens and 2 x 5 x 3 video.
LENGTHS = {"even": (7, 2, 4, 4), "odd": (7, 2, 5, 3)}


@dataclasses.dataclass
class HunyuanVideo15Case(ParallelDiTCase):
    def inputs(self, variant: str) -> dict:
        text_len, frames, rows, cols = LENGTHS[variant]
        generator = torch.Generator().manual_seed(1)
        mask = torch.ones(2, text_len, dtype=torch.long)
        mask[1, 4:] = 0
        return dict(
            hidden_states=torch.randn(2, 9, frames, rows, cols, generator=generator),
            timestep=torch.tensor([300.0, 850.0]),
            encoder_hidden_states=torch.randn(2, text_len, 12, generator=generator),
            encoder_attention_mask=mask,
            encoder_hidden_states_2=torch.randn(2, 4, 10, generator=generator),
            encoder_attention_mask_2=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]),
            image_embeds=torch.randn(2, 5 if variant == "odd" else 4, 8, generator=generator),
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        _, _, frames, rows, cols = inputs["hidden_states"].shape
        return model(**inputs, freqs_cis=model.rotary_emb(frames, rows, cols))


class TestHunyuanVideo15Parallel(ParallelDiTMixin):
    dit = HunyuanVideo15Case(HunyuanVideo15Transformer3DModel, CONFIG)
