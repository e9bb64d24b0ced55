"""The one shape every DiT has: embed -> a stack of blocks -> final layer, each part callable on its own.

A step cache (easel/runtime/cache) runs or skips any span of the stack through this interface alone, so it needs to
know nothing else about a model. Between two spans the hidden state is `BlockStack.streams`, the token streams in a
fixed order with the image (or video) stream, the one the final layer reads, first; a DiT whose blocks work on the
streams concatenated (FLUX's single-stream blocks, Z-Image's joint layers) concatenates them inside `run_blocks`.
"""

import dataclasses

import torch
from torch import nn

from easel.runtime.distributed import SequenceShard


@dataclasses.dataclass
class BlockStack:
    """One forward's hidden streams between blocks; each DiT's subclass adds what its blocks need besides."""

    streams: list[torch.Tensor]  # streams[0]: the image / video tokens, (B, L / N, D), this rank's shard
    shard: SequenceShard  # where streams[0]'s real tokens lie (sequence parallelism pads the last rank's part)


class BlockStackDiT(nn.Module):
    """A DiT as embed, blocks and final layer; `forward` runs the three, the blocks through a step cache if given."""

    # Which TeaCache rescaling polynomial applies (easel/runtime/cache/teacache.py).
    cache_family: str = ""
    # The attributes holding the repeated blocks (nn.ModuleLists), in the order a forward runs them: what regional
    # compilation compiles and layerwise offload streams to the device, one block at a time.
    block_lists: tuple[str, ...] = ()

    @property
    def num_blocks(self) -> int:
        """The blocks `run_blocks` indexes, every stack of the model counted in order."""
        raise NotImplementedError

    def repeated_blocks(self) -> list[nn.Module]:
        """Every repeated block, in the order a forward runs them (lists the model lacks, e.g. Z-Image's optional
        SigLIP refiner, are skipped)."""
        return [block for name in self.block_lists for block in getattr(self, name, None) or ()]

    def embed(self, *args, **kwargs) -> BlockStack:
        """The forward's inputs (the Diffusers model's arguments) to the state before the first block."""
        raise NotImplementedError

    def run_blocks(self, stack: BlockStack, start: int, end: int) -> None:
        """Blocks [start, end) on stack.streams, replacing its tensors (never writing into them: a cache holds them)."""
        raise NotImplementedError

    def finish(self, stack: BlockStack) -> torch.Tensor:
        """The final layer on stack.streams[0]: the model's output, as the Diffusers model returns it."""
        raise NotImplementedError

    def modulated_input(self, stack: BlockStack) -> torch.Tensor:
        """The first block's modulated (adaLN) image tokens: TeaCache's cheap estimate of how much a step changes."""
        raise NotImplementedError

    def forward(self, *args, cache=None, **kwargs) -> torch.Tensor:
        """The model's output for `embed`'s arguments; `cache` (a `BranchCache`) may skip part of the stack."""
        stack = self.embed(*args, **kwargs)
        if cache is None:
            self.run_blocks(stack, 0, self.num_blocks)
        else:
            cache.run(self, stack)
        return self.finish(stack)
