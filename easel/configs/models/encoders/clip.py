"""CLIP text encoder: FLUX and SD3 take its pooled output, from a 77-token window."""

import dataclasses
from typing import Literal

from easel.configs.models.encoders.base import TextEncoderConfig


@dataclasses.dataclass
class CLIPTextConfig(TextEncoderConfig):
    """CLIP ViT-L/14 text tower as FLUX uses it: pooled output, 77 tokens."""

    output: Literal["sequence", "pooled"] = "pooled"
    max_length: int | None = 77
