"""Seeding of random-weight components so that a build depends on its seed alone."""

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block, then restore the caller's generator state.

    Modules initialize their weights from the global generator; forking it keeps a build from changing the random
    stream of the code that called it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
