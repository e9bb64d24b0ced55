"""Causal Wan: the Wan DiT run a block of frames at a time, each block attending to the blocks before it.

Self-forcing (and CausVid) checkpoints are Wan2.1 DiTs trained with block-causal self-attention: the tokens of a
block of latent frames attend to their own block and to every earlier one, never to a later one. So a video is made
block after block, and the keys and values of a finished block, which no later block changes, are cached
(`easel.runtime.layers.KVCache`, one per block of the stack) instead of recomputed. The weights, and so the module
tree and the checkpoint keys, are Wan's (`wanvideo.py`); what differs is only what a forward sees:

- `hidden_states` holds one block of frames, and `freqs_cis` the rotary rows of those frames' places in the video;
- `kv_cache` (a `CausalWanCache`) carries every block's cached keys (the attention dispatcher prepends them) and
  the prompt's cross-attention keys, computed by the request's first forward.

Without a cache the model is plain Wan: a whole video of one block, or, given a block-causal `attn_mask` in its
`WanStack`, the no-cache reference the tests compare with.
"""

import dataclasses

from easel.runtime.layers import ContextKV, KVCache
from easel.runtime.models.dits.wanvideo import WanStack, WanTransformer3DModel


@dataclasses.dataclass
class CausalWanCache:
    """One request's caches: per DiT block, its self-attention's earlier frames and its cross-attention's prompt."""

    self_attention: list[KVCache]
    cross_attention: list[ContextKV]

    @classmethod
    def empty(cls, num_blocks: int, window: int | None = None) -> "CausalWanCache":
        """Caches for a model of `num_blocks` blocks; `window`: the most tokens a query attends to (None: all)."""
        return cls([KVCache(window) for _ in range(num_blocks)], [ContextKV() for _ in range(num_blocks)])

    def record(self, on: bool) -> None:
        """Whether the next forwards' keys and values join the cache (a finished block's, once, clean)."""
        for cache in self.self_attention:
            cache.record = on

    @property
    def tokens(self) -> int:
        """How many earlier tokens the cache holds (the same in every block)."""
        return self.self_attention[0].tokens


@dataclasses.dataclass
class CausalWanStack(WanStack):
    """WanStack with the request's caches, or None for a forward without them."""

    kv_cache: CausalWanCache | None = None


class CausalWanTransformer3DModel(WanTransformer3DModel):
    """The Wan transformer over one block of frames, with the cached keys of the blocks before it."""

    def new_kv_cache(self, window: int | None = None) -> CausalWanCache:
        """Empty caches for a request; `window`: the most tokens a query attends to, its own included (None: all)."""
        return CausalWanCache.empty(self.num_blocks, window)

    def embed(self, *args, kv_cache: CausalWanCache | None = None, **kwargs) -> CausalWanStack:
        """`WanTransformer3DModel.embed`'s arguments (one block's latents and rotary rows) and the request's caches."""
        stack = super().embed(*args, **kwargs)
        fields = {field.name: getattr(stack, field.name) for field in dataclasses.fields(stack)}
        return CausalWanStack(**fields, kv_cache=kv_cache)

    def run_blocks(self, stack: CausalWanStack, start: int, end: int) -> None:
        if stack.kv_cache is None:
            return super().run_blocks(stack, start, end)
        (x,) = stack.streams
        caches = stack.kv_cache
        for index in range(start, end):
            x = self.blocks[index](
                x,
                stack.context,
                stack.image_context,
                stack.timestep_proj,
                stack.freqs_cis,
                stack.attn_mask,
                kv_cache=caches.self_attention[index],
                context_kv=caches.cross_attention[index],
            )
        stack.streams = [x]


EntryClass = CausalWanTransformer3DModel
