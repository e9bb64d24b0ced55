"""Splitting a token stream across the sequence-parallel group once before a DiT's first block, and gathering it
once after the last.

Rank i of the SP group holds tokens [i n, (i + 1) n) of the stream zero-padded to a multiple of the group size
(n tokens per rank). Every per-token layer then runs on the local tokens as it is; only attention communicates
(`easel.runtime.layers.attention`), and there the padded tokens are masked out of the keys. Rotary tables and masks
are split with the same `SequenceShard`, so each token keeps its own position.
"""

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from easel.runtime.distributed.communication import all_gather
from easel.runtime.distributed.parallel_state import get_sp_rank, get_sp_world_size


@dataclasses.dataclass(frozen=True)
class SequenceShard:
    """Where this rank's part of one token stream of `length` tokens lies."""

    length: int  # real tokens of the whole stream
    size: int = 1  # ranks sharing it
    rank: int = 0

    @classmethod
    def of(cls, length: int) -> "SequenceShard":
        """The shard of a stream of `length` tokens on this rank of the SP group."""
        return cls(length, get_sp_world_size(), get_sp_rank())

    @property
    def local_length(self) -> int:
        """Tokens per rank, padding included."""
        return -(-self.length // self.size)

    @property
    def start(self) -> int:
        return self.rank * self.local_length

    @property
    def is_padded(self) -> bool:
        """True when the stream does not divide by the group: then every rank masks (the same decision on all)."""
        return self.length % self.size != 0

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's tokens of x (whole stream along `dim`), zero-padded to `local_length`."""
        if self.size == 1:
            return x
        dim = dim % x.dim()
        local = x.narrow(dim, min(self.start, self.length), max(0, min(self.local_length, self.length - self.start)))
        missing = self.local_length - local.shape[dim]
        if missing:
            pad = [0, 0] * (x.dim() - 1 - dim) + [0, missing]  # F.pad counts dimensions from the last
            local = F.pad(local, pad)
        return local

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole stream (its `length` real tokens) from every rank's local part along `dim`."""
        if self.size == 1:
            return x
        return all_gather(x, "sp", dim).narrow(dim % x.dim(), 0, self.length)


def split_streams(x: torch.Tensor, shards: Sequence[SequenceShard], dim: int = 1) -> torch.Tensor:
    """This rank's part of x, which holds the whole streams of `shards` one after another along `dim` (a rotary
    table or mask of text then image tokens): each stream's shard, concatenated in the same order."""
    if shards[0].size == 1:
        return x
    parts = x.split([shard.length for shard in shards], dim=dim)
    return torch.cat([shard.split(part, dim) for shard, part in zip(shards, parts, strict=True)], dim=dim)


def streams_key_mask(
    shards: Sequence[SequenceShard], batch: int, device: torch.device, mask: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The key mask (B, local tokens of every stream) of streams that attend to each other, in `split_streams`
    order: `mask` (B, whole streams) or all keys, with every stream's padding masked; None when there is neither."""
    if mask is None and not any(shard.is_padded for shard in shards):
        return None
    if mask is None:
        mask = torch.ones(batch, sum(shard.length for shard in shards), dtype=torch.bool, device=device)
    return split_streams(mask.bool(), shards, dim=1)
