"""The process groups of a parallel run, created once per process, and their accessors.

The world is laid out as cfg x ring x ulysses x tp, tp innermost: rank = ((c * R + r) * U + u) * T + t. Consecutive
ranks are the nearest devices (one node's GPUs, NVLink), so the chattiest groups get them: tensor parallelism
all-reduces full activations after every row-parallel layer (three or four times a block), Ulysses exchanges
all-to-alls once per attention, ring attention passes
K/V blocks that overlap with compute, and CFG parallelism sends one prediction per step, so it may span nodes.

The sequence-parallel (SP) group is ring x ulysses: the ranks that share one sequence, each holding a shard of it,
in the order sp_rank = r * U + u (so the U shards of one Ulysses group are one contiguous block of the ring).

At world size 1 nothing is initialised: every accessor answers size 1 / rank 0 and no collective runs.
"""

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from easel.errors import InvalidInputError


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    """How many ranks each kind of parallelism takes; their product is the world size."""

    cfg: int = 1  # 1 or 2: the conditional and unconditional passes on two halves of the world
    ring: int = 1
    ulysses: int = 1
    tp: int = 1

    @property
    def world_size(self) -> int:
        return self.cfg * self.ring * self.ulysses * self.tp

    def coordinates(self, rank: int) -> tuple[int, int, int, int]:
        """(cfg, ring, ulysses, tp) index of a global rank."""
        rank, t = divmod(rank, self.tp)
        rank, u = divmod(rank, self.ulysses)
        c, r = divmod(rank, self.ring)
        return c, r, u, t

    def describe(self) -> str:
        return f"cfg {self.cfg} x ring {self.ring} x ulysses {self.ulysses} x tp {self.tp}"


@dataclasses.dataclass
class _Group:
    """One process group as this rank sees it."""

    group: dist.ProcessGroup | None = None
    size: int = 1
    rank: int = 0
    ranks: tuple[int, ...] = (0,)


@dataclasses.dataclass
class _State:
    layout: ParallelLayout = dataclasses.field(default_factory=ParallelLayout)
    rank: int = 0
    groups: dict[str, _Group] = dataclasses.field(default_factory=dict)


_STATE = _State()
# How long a collective waits for a rank before it raises: a rank that hangs or died without closing its sockets
# then takes the others down in bounded time instead of leaving them waiting. EASEL_DIST_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 300.0
GROUP_KINDS = ("cfg", "ring", "ulysses", "tp", "sp", "world")


def init_distributed(
    layout: ParallelLayout,
    rank: int | None = None,
    init_method: str | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
) -> None:
    """Joins the world and creates every group of `layout`.

    rank / init_method default to torchrun's environment (RANK, MASTER_ADDR, MASTER_PORT); backend to NCCL when
    CUDA is available, else gloo; timeout_s (every group's) to EASEL_DIST_TIMEOUT_S or DEFAULT_TIMEOUT_S. A world
    of one process creates nothing.
    """
    global _STATE
    if layout.world_size == 1:
        _STATE = _State(layout=layout)
        return
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    timeout = datetime.timedelta(seconds=timeout_s or float(os.environ.get("EASEL_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(
            backend, init_method=init_method or "env://", rank=rank, world_size=layout.world_size, timeout=timeout
        )
    elif dist.get_world_size() != layout.world_size:
        raise InvalidInputError(
            f"the process group has {dist.get_world_size()} ranks but the layout ({layout.describe()}) needs "
            f"{layout.world_size}"
        )
    _STATE = _State(layout=layout, rank=dist.get_rank())
    # Every rank must create every group, in the same order, even those it is not in; groups of one rank are left
    # out (every rank skips the same ones), their accessors answering size 1 as at world size 1.
    for kind in GROUP_KINDS:
        for ranks in _group_ranks(layout, kind):
            if len(ranks) == 1:
                continue
            group = dist.new_group(list(ranks), timeout=timeout)
            if _STATE.rank in ranks:
                _STATE.groups[kind] = _Group(group, len(ranks), ranks.index(_STATE.rank), ranks)


def _group_ranks(layout: ParallelLayout, kind: str) -> list[tuple[int, ...]]:
    """The rank lists of every group of one kind: ranks that differ only in that kind's coordinate(s)."""
    varying = {"sp": ("ring", "ulysses"), "world": ("cfg", "ring", "ulysses", "tp")}.get(kind, (kind,))
    groups: dict[tuple, list[int]] = {}
    for rank in range(layout.world_size):
        coords = dict(zip(("cfg", "ring", "ulysses", "tp"), layout.coordinates(rank), strict=True))
        fixed = tuple(value for name, value in coords.items() if name not in varying)
        groups.setdefault(fixed, []).append(rank)
    return [tuple(ranks) for ranks in groups.values()]


def destroy_distributed() -> None:
    """Leaves the world (if joined) and returns to the single-process state."""
    global _STATE
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE = _State()


def get_layout() -> ParallelLayout:
    return _STATE.layout


def get_world_rank() -> int:
    return _STATE.rank


_SOLO = _Group()  # what a rank alone in a group (or in the world) sees


def _group(kind: str) -> _Group:
    return _STATE.groups.get(kind, _SOLO)


def get_group(kind: str) -> dist.ProcessGroup | None:
    """The process group of `kind` ("cfg", "ring", "ulysses", "tp", "sp" or "world") this rank is in; None at size 1."""
    return _group(kind).group


def get_group_size(kind: str) -> int:
    return _group(kind).size


def get_group_rank(kind: str) -> int:
    return _group(kind).rank


def get_group_ranks(kind: str) -> tuple[int, ...]:
    """The global ranks of this rank's group of `kind`, in group-rank order."""
    return _group(kind).ranks


def get_tp_world_size() -> int:
    return get_group_size("tp")


def get_tp_rank() -> int:
    return get_group_rank("tp")


def get_sp_world_size() -> int:
    return get_group_size("sp")


def get_sp_rank() -> int:
    return get_group_rank("sp")


def get_cfg_world_size() -> int:
    return get_group_size("cfg")


def get_cfg_rank() -> int:
    return get_group_rank("cfg")


def is_output_rank() -> bool:
    """True on the one rank that writes outputs (global rank 0)."""
    return _STATE.rank == 0
