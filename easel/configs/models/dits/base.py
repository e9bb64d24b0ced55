"""The base config of every DiT."""

import dataclasses

from easel.configs.models.base import ModelConfig


@dataclasses.dataclass
class DiTConfig(ModelConfig):
    """Fields shared by every DiT: how many latent channels go in and come out."""

    in_channels: int = 64
    out_channels: int | None = None
