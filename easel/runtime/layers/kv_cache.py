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

    @property
    def tokens(self) -> int:
        return 0 if self.key is None else self.key.shape[1]

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> KeyValue:
        """The keys and values a forward's queries attend to: the cached ones within the window, then its own
        (B, L, H, D); recorded into the cache when `record` is set."""
        if self.key is not None:
            keep = self.tokens if self.window is None else max(0, min(self.tokens, self.window - key.shape[1]))
            key = torch.cat([self.key[:, self.tokens - keep :], key], dim=1)
            value = torch.cat([self.value[:, self.tokens - keep :], value], dim=1)
        if self.record:
            start = 0 if self.window is None else max(0, key.shape[1] - self.window)
            self.key, self.value = key[:, start:], value[:, start:]
        return key, value


@dataclasses.dataclass
class ContextKV:
    """A cross-attention layer's keys and values of the request's fixed context: computed once, then reused."""

    key_value: KeyValue | None = None

    def get(self, compute: Callable[[], KeyValue]) -> KeyValue:
        if self.key_value is None:
            self.key_value = compute()
        return self.key_value


__all__ = ["ContextKV", "KVCache"]
