"""Collectives over one of the parallel groups, written for tensors laid out as the DiTs use them.

Each is a no-op at group size 1, so the single-device path runs no collective and copies nothing.
"""

import torch
import torch.distributed as dist

from easel.runtime.distributed.parallel_state import get_group, get_group_size

# torch 2.13 names it all_gather_single; earlier releases only all_gather_into_tensor (now its deprecated alias).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_reduce(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The sum of x over the group; x's own storage may be reused for it, so pass a tensor nothing else reads."""
    if get_group_size(kind) == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, group=get_group(kind))
    return x


def all_gather(x: torch.Tensor, kind: str, dim: int) -> torch.Tensor:
    """Every rank's x, concatenated along `dim` in group-rank order; every rank's x must have the same shape."""
    size = get_group_size(kind)
    if size == 1:
        return x
    dim = dim % x.dim()
    x = x.movedim(dim, 0).contiguous()
    out = x.new_empty((size * x.shape[0], *x.shape[1:]))
    _all_gather_single(out, x, group=get_group(kind))
    return out.movedim(0, dim)


def all_to_all(x: torch.Tensor, kind: str, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Splits x along scatter_dim into one chunk per rank, sends chunk i to rank i, and concatenates what arrives
    along gather_dim in rank order (Ulysses' exchange between sequence and head sharding)."""
    size = get_group_size(kind)
    if size == 1:
        return x
    scatter_dim, gather_dim = scatter_dim % x.dim(), gather_dim % x.dim()
    if x.shape[scatter_dim] % size:
        raise ValueError(f"dimension {scatter_dim} of size {x.shape[scatter_dim]} does not split over {size} ranks")
    chunks = x.movedim(scatter_dim, 0).unflatten(0, (size, -1)).contiguous()  # (size, chunk, ...)
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=get_group(kind))
    # received[i] is rank i's chunk: put the ranks along gather_dim.
    received = received.movedim(1, scatter_dim + 1)  # (size, ..., chunk at scatter_dim, ...)
    return received.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)
