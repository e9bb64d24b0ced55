"""Starting the ranks of a parallel run as local processes, one per device (or, on the CPU, one per gloo rank).

`run_on_ranks(fn, layout, *args)` spawns one process per rank of `layout`, joins them into one world with a
`file://` rendezvous (no port), calls `fn(*args)` on each after `init_distributed`, and returns every rank's result
in rank order. `fn` must be a module-level function (it is pickled into the children). Tests and benchmarks use it
on the CPU; `easel generate --num-gpus` and the Python API drive long-lived ranks through `rank_group` instead.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from easel.runtime.distributed.parallel_state import ParallelLayout, destroy_distributed, init_distributed


def _child(
    rank: int,
    fn: Callable,
    layout: ParallelLayout,
    rendezvous: str,
    results: str,
    threads: int | None,
    backend: str | None,
    args: tuple,
) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    init_distributed(layout, rank=rank, init_method=f"file://{rendezvous}", backend=backend)
    try:
        result = fn(*args)
    finally:
        destroy_distributed()
    torch.save(result, Path(results) / f"rank{rank}.pt")


def run_on_ranks(
    fn: Callable, layout: ParallelLayout, *args: Any, threads: int | None = 1, backend: str | None = "gloo"
) -> list[Any]:
    """fn(*args) on every rank of `layout`, each a local process with `threads` torch threads; their results."""
    with tempfile.TemporaryDirectory(prefix="easel-ranks-") as scratch:
        rendezvous = os.path.join(scratch, "rendezvous")
        mp.spawn(
            _child,
            args=(fn, layout, rendezvous, scratch, threads, backend, args),
            nprocs=layout.world_size,
            join=True,
        )
        return [torch.load(Path(scratch) / f"rank{rank}.pt", weights_only=False) for rank in range(layout.world_size)]
