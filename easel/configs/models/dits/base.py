"""The base config of every DiT."""

import dataclasses

from easel.configs.models.base import ModelConfig


@dataclasses.dataclass
class DiTConfig(ModelConfig):
    """Fields shared by every DiT: how many latent channels go in and come out."""

    in_channels: int = 64
    out_channels: int | None = None

    @property
    def attention_heads(self) -> int:
        """Heads of the DiT's attention: what Ulysses and tensor parallelism split (layouts are checked on it)."""
        return self.num_attention_heads
