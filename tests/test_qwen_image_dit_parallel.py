"""Qwen-Image's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process, with
and without a padded text mask, and a zero_cond_t (Edit-2511) checkpoint whose noisy / reference split falls inside
the ranks' shards."""

import dataclasses
import math

import torch

from easel.configs.models.dits.qwen_image import QwenImageDitConfig
from easel.runtime.models.dits.qwen_image import QwenImageTransformer2DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

# 4 heads so Ulysses 2 x TP 2 has a head per rank.
CONFIG = QwenImageDitConfig(
    patch_size=2,
    in_channels=16,
    out_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=4,
    joint_attention_dim=24,
    axes_dims_rope=(4, 6, 6),
)
TEXT_LENS = {"even": 8, "odd": 7}
# (frames, rows, columns) of each packed grid; "odd" totals divide by neither 2 nor 4.
T2I_SHAPES = {"even": [(1, 4, 4)], "odd": [(1, 3, 5)]}
# The noisy grid, then a reference one: under ring 4 the noisy tokens end inside a rank's shard (6 of 16 tokens,
# 9 of 15), so ranks hold all, some or none of them.
EDIT_SHAPES = {"even": [(1, 2, 3), (1, 2, 5)], "odd": [(1, 3, 3), (1, 2, 3)]}


@dataclasses.dataclass
class QwenImageCase(ParallelDiTCase):
    img_shapes: dict[str, list[tuple[int, int, int]]] = dataclasses.field(default_factory=dict)

    def inputs(self, variant: str) -> dict:
        text_len, img_shapes = TEXT_LENS[variant], self.img_shapes[variant]
        length = sum(math.prod(shape) for shape in img_shapes)
        generator = torch.Generator().manual_seed(1)
        return dict(
            hidden_states=torch.randn(2, length, 16, generator=generator),
            encoder_hidden_states=torch.randn(2, text_len, 24, generator=generator),
            timestep=torch.tensor([0.3, 0.85]),
            img_shapes=img_shapes,
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        """The unmasked pass and a padded-text pass (sample 0's last 3 text tokens masked), one after the other."""
        text_len = inputs["encoder_hidden_states"].shape[1]
        mask = torch.ones(2, text_len, dtype=torch.long)
        mask[0, -3:] = 0
        freqs_cis = model.rotary_emb(inputs["img_shapes"], text_len)
        passes = [model(**inputs, freqs_cis=freqs_cis, encoder_hidden_states_mask=m) for m in (None, mask)]
        return torch.cat(passes)


class TestQwenImageParallel(ParallelDiTMixin):
    dit = QwenImageCase(QwenImageTransformer2DModel, CONFIG, T2I_SHAPES)


class TestQwenImageZeroCondTParallel(ParallelDiTMixin):
    dit = QwenImageCase(QwenImageTransformer2DModel, dataclasses.replace(CONFIG, zero_cond_t=True), EDIT_SHAPES)
