"""CFG parallelism: the DiT passes of one denoising step (conditional, unconditional, any extra one) spread over the
CFG group, each rank running its share, with one all-gather bringing every prediction to every rank."""

from collections.abc import Callable
from typing import Any

import torch

from easel.runtime.distributed.communication import all_gather
from easel.runtime.distributed.parallel_state import get_cfg_rank, get_cfg_world_size


def run_passes(run: Callable[[dict[str, Any]], torch.Tensor], passes: list[dict[str, Any]]) -> list[torch.Tensor]:
    """run(kwargs) for every pass, in order; pass i runs on rank i mod the CFG group's size.

    A step with one pass (no guidance) runs it on every rank: the ranks would otherwise idle, and nothing needs
    exchanging. Every pass's prediction has the same shape, which the all-gather relies on.
    """
    size = get_cfg_world_size()
    if size == 1 or len(passes) == 1:
        return [run(kwargs) for kwargs in passes]
    rank = get_cfg_rank()
    mine = [run(kwargs) for kwargs in passes[rank::size]]
    slots = -(-len(passes) // size)  # passes per rank, the last ranks padded with zeros
    mine += [torch.zeros_like(mine[0])] * (slots - len(mine))
    gathered = all_gather(torch.stack(mine), "cfg", dim=0)  # (size * slots, ...): rank r's passes at r * slots
    return [gathered[(i % size) * slots + i // size] for i in range(len(passes))]
