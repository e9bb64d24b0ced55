"""Z-Image's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process."""

import dataclasses
from unittest import mock

import pytest
import torch

from easel.configs.models.dits.z_image import ZImageDitConfig
from easel.runtime.distributed import SequenceShard
from easel.runtime.models.dits import z_image
from easel.runtime.models.dits.z_image import ZImageTransformer2DModel
from tests.parallel_dit import ParallelDiTCase, ParallelDiTMixin

CHANNELS, CAPTION_DIM = 4, 24
# 4 heads so Ulysses 2 x TP 2 has a head per rank; width 48 for an MLP width (128) that TP 2 divides.
CONFIG = ZImageDitConfig(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=CHANNELS,
    dim=48,
    n_layers=2,
    n_refiner_layers=1,
    n_heads=4,
    n_kv_heads=4,
    cap_feat_dim=CAPTION_DIM,
    axes_dims=(4, 4, 4),
    axes_lens=(1536, 512, 512),
)
# Latents of 10x14 are 5x7 = 35 image tokens; the two captions differ in length, so the caption refiner and the
# joint layers run behind their key-padding masks in both variants. Z-Image pads every stream to a multiple of 32,
# which the SP degrees here (2, 4) always divide: "even" keeps that (64 image tokens, captions 32 and 64), "odd"
# pads to multiples of 13 instead (39 image tokens, captions 13 and 39), so that both streams are padded for SP.
LATENT_SIZE = (1, 10, 14)
VARIANTS = {"even": (32, (7, 40)), "odd": (13, (7, 30))}  # stream multiple, caption lengths


@dataclasses.dataclass
class ZImageCase(ParallelDiTCase):
    def inputs(self, variant: str) -> dict:
        multiple, caption_lens = VARIANTS[variant]
        generator = torch.Generator().manual_seed(1)
        return dict(
            x=torch.randn(len(caption_lens), CHANNELS, *LATENT_SIZE, generator=generator),
            t=torch.tensor([0.3, 0.85]),
            cap_feats=[torch.randn(n, CAPTION_DIM, generator=generator) for n in caption_lens],
            multiple=multiple,
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        with mock.patch.object(z_image, "SEQ_MULTI_OF", inputs.pop("multiple")):
            return model(**inputs)


class TestZImageParallel(ParallelDiTMixin):
    dit = ZImageCase(ZImageTransformer2DModel, CONFIG)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_odd_variant_pads_both_streams_for_sequence_parallelism(variant: str) -> None:
    multiple, caption_lens = VARIANTS[variant]
    with mock.patch.object(z_image, "SEQ_MULTI_OF", multiple):
        layout = z_image.ZImageLayoutEmbedding(CONFIG.axes_dims, CONFIG.rope_theta)(caption_lens, LATENT_SIZE)
    assert layout.caption_mask is not None  # captions of different lengths in one batch
    streams = (layout.padded_image_len, max(layout.padded_caption_lens))
    for size in (2, 4):
        padded = [SequenceShard(length, size).is_padded for length in streams]
        assert padded == ([variant == "odd"] * 2), (variant, size, streams)
