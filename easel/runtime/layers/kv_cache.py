"""Keys and values an attention layer keeps across the forwards of one request: block-causal video generation.

A block-causal model denoises its frames a block at a time; each block attends to the keys and values of the blocks
before it, which do not change once those blocks are done. `KVCache` holds them for one self-attention layer, and
the attention dispatcher (`easel.runtime.layers.attention.attention`) puts them before the forward's own keys, so
every backend, and sequence parallelism's Ulysses exchange, serves a cached forward as any other. `ContextKV` holds
a cross-attention layer's keys and values of a context that every forward of the request shares (its prompt).
"""

import dataclasses
from collections.abc import Callable

import torch

KeyValue = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class KVCache:
    """One self-attention layer's cached keys and values, (B, T, H, D), earliest first."""

    # The most keys a query attends to, its own forward's included (a sliding window over the latest tokens); None
    # attends to every cached token. The cache never holds more than that.
    window: int | None = None
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    # Set by the caller: this forward's keys and values join the cache once they have been attended to.
    record: bool = False
    # False: the forward attends to its own keys only, the cache aside (GLM-Image records each condition image alone).
    read: bool = True

    @property
    def tokens(self) -> int:
        return 0 if self.key is None else self.key.shape[1]

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> KeyValue:
        """The keys and values a forward's queries attend to: the cached ones within the window (unless `read` is
        off), then its own (B, L, H, D); with `record`, the cache then holds the latest `window` of both."""
        # One cached sample serves every row of the forward (the outputs of one prompt).
        cached = None if self.key is None else [t.expand(key.shape[0], -1, -1, -1) for t in (self.key, self.value)]
        attended = key, value
        if cached is not None and self.read:
            keep = self.tokens if self.window is None else max(0, min(self.tokens, self.window - key.shape[1]))
            attended = tuple(
                torch.cat([c[:, self.tokens - keep :], own], dim=1) for c, own in zip(cached, attended, strict=True)
            )
        if self.record:
            joined = (
                (key, value)
                if cached is None
                else [torch.cat(pair, dim=1) for pair in zip(cached, (key, value), strict=True)]
            )
            start = 0 if self.window is None else max(0, joined[0].shape[1] - self.window)
            self.key, self.value = (t[:, start:] for t in joined)
        return attended


@dataclasses.dataclass
class ContextKV:
    """A cross-attention layer's keys and values of the request's fixed context: computed once, then reused."""

    key_value: KeyValue | None = None

    def get(self, compute: Callable[[], KeyValue]) -> KeyValue:
        if self.key_value is None:
            self.key_value = compute()
        return self.key_value


__all__ = ["ContextKV", "KVCache"]
