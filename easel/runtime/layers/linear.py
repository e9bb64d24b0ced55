"""Linear layers that tensor parallelism shards; plain nn.Linear at TP size 1.

A model is built once the process groups exist, so each rank builds only its own shard (on the meta device), and
the loader fills it through `shard_tensor`, slicing the checkpoint's full tensor as it is read. Attention heads and
MLP widths split this way: a column-parallel layer computes this rank's output features, the row-parallel layer
after it takes those features and all-reduces its output, one all-reduce per pair.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from easel.errors import InvalidInputError
from easel.runtime.distributed.communication import all_reduce
from easel.runtime.distributed.parallel_state import get_tp_rank, get_tp_world_size


def _split_width(width: int, segments: Sequence[int] | None, what: str) -> tuple[int, ...]:
    """The segments of a sharded dimension (each split across TP ranks on its own), checked to divide."""
    segments = tuple(segments) if segments is not None else (width,)
    if sum(segments) != width:
        raise ValueError(f"segments {segments} of {what} do not add up to its width {width}")
    tp = get_tp_world_size()
    if any(segment % tp for segment in segments):
        raise InvalidInputError(
            f"tensor parallelism of size {tp} does not divide the {what} widths {segments}; choose a --tp-size that "
            "divides the heads and MLP widths"
        )
    return segments


def _shard_dim(full: torch.Tensor, dim: int, segments: tuple[int, ...]) -> torch.Tensor:
    """This rank's slice of each segment of `full` along `dim`, concatenated. `full` may be a safetensors slice
    (anything indexable like a tensor), so only the shard is read."""
    tp, rank = get_tp_world_size(), get_tp_rank()
    pieces, start = [], 0
    for segment in segments:
        local = segment // tp
        lo = start + rank * local
        index = (slice(lo, lo + local),) if dim == 0 else (slice(None), slice(lo, lo + local))
        pieces.append(full[index])
        start += segment
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


class ColumnParallelLinear(nn.Linear):
    """Shards the output features (rows of `weight`) across TP ranks; each rank outputs its own features.

    segments: widths of output blocks sharded each on its own (FLUX.2's fused [q | k | v | MLP gate | MLP up]), so
    that a rank's output holds its part of every block, in order; default one block.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, segments: Sequence[int] | None = None):
        self.segments = _split_width(out_features, segments, "output")
        super().__init__(in_features, out_features // get_tp_world_size(), bias)
        self.full_features = (in_features, out_features)

    def shard_tensor(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the full checkpoint tensor `name` ("weight" or "bias")."""
        return _shard_dim(full, 0, self.segments) if get_tp_world_size() > 1 else full[...]

    def shard_lora(self, down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A full LoRA pair (down (r, in), up (out, r)) as this rank applies it: up's rows are the output features."""
        return down, self.shard_tensor("weight", up)


class RowParallelLinear(nn.Linear):
    """Shards the input features (columns of `weight`) across TP ranks; the partial outputs are all-reduced and the
    bias added once.

    segments: widths of input blocks sharded each on its own (FLUX's [attention | MLP] input); default one block.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, segments: Sequence[int] | None = None):
        self.segments = _split_width(in_features, segments, "input")
        super().__init__(in_features // get_tp_world_size(), out_features, bias)
        self.full_features = (in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_tp_world_size() == 1:
            return super().forward(x)
        out = all_reduce(F.linear(x, self.weight), "tp")
        return out + self.bias if self.bias is not None else out

    def shard_tensor(self, name: str, full: torch.Tensor) -> torch.Tensor:
        if name == "bias" or get_tp_world_size() == 1:
            return full[...]
        return _shard_dim(full, 1, self.segments)

    def shard_lora(self, down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """down's columns are the input features; the low-rank product then needs the all-reduce `reduce_lora` does."""
        return self.shard_tensor("weight", down), up

    @staticmethod
    def reduce_lora(hidden: torch.Tensor) -> torch.Tensor:
        """The partial low-rank activations (…, r) of every rank, summed: only r wide, so cheap to all-reduce."""
        return all_reduce(hidden, "tp")


ParallelLinear = ColumnParallelLinear | RowParallelLinear


def full_features(linear: nn.Linear) -> tuple[int, int]:
    """(in, out) features of the whole layer, as a checkpoint (or a LoRA file) has it, whatever this rank holds."""
    return getattr(linear, "full_features", (linear.in_features, linear.out_features))


def checkpoint_sharder(model: nn.Module):
    """`shard(key, full) -> tensor`: this rank's part of the checkpoint tensor `key` of `model` (the whole tensor
    for every layer that is not tensor-parallel). `full` may be a tensor or a safetensors slice. A layer is
    tensor-parallel when it has a `shard_tensor(name, full)` method (the parallel linears, `ParallelRMSNorm`)."""
    modules = dict(model.named_modules())

    def shard(key: str, full) -> torch.Tensor:
        module_name, _, tensor_name = key.rpartition(".")
        module = modules.get(module_name)
        if hasattr(module, "shard_tensor"):
            return module.shard_tensor(tensor_name, full)
        return full[...]

    return shard
