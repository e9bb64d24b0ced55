"""Linear layers named for how tensor parallelism will shard them; plain nn.Linear at world size 1."""

from torch import nn


class ColumnParallelLinear(nn.Linear):
    """Under tensor parallelism, shards the output features (rows of `weight`) across ranks."""


class RowParallelLinear(nn.Linear):
    """Under tensor parallelism, shards the input features (columns of `weight`); outputs are all-reduced."""
