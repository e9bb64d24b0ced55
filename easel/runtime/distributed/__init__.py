"""Parallel runs on torch.distributed: process groups, collectives and sequence sharding (NCCL on GPUs, gloo on CPUs).

The parallel layers themselves live in the layer library (`easel.runtime.layers`): attention runs Ulysses / ring
under sequence parallelism, `ColumnParallelLinear` / `RowParallelLinear` shard under tensor parallelism.
"""

from easel.runtime.distributed.communication import all_gather, all_reduce, all_to_all
from easel.runtime.distributed.parallel_state import (
    ParallelLayout,
    destroy_distributed,
    get_cfg_rank,
    get_cfg_world_size,
    get_group,
    get_group_rank,
    get_group_size,
    get_layout,
    get_sp_rank,
    get_sp_world_size,
    get_tp_rank,
    get_tp_world_size,
    get_world_rank,
    init_distributed,
    is_output_rank,
)
from easel.runtime.distributed.sequence_shard import SequenceShard, split_streams, streams_key_mask

__all__ = [
    "ParallelLayout",
    "SequenceShard",
    "all_gather",
    "all_reduce",
    "all_to_all",
    "destroy_distributed",
    "get_cfg_rank",
    "get_cfg_world_size",
    "get_group",
    "get_group_rank",
    "get_group_size",
    "get_layout",
    "get_sp_rank",
    "get_sp_world_size",
    "get_tp_rank",
    "get_tp_world_size",
    "get_world_rank",
    "init_distributed",
    "is_output_rank",
    "split_streams",
    "streams_key_mask",
]
