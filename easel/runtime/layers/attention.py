"""Attention behind a backend dispatcher: every DiT calls one function, whatever kernel runs it."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from easel.errors import EaselError
from easel.runtime.distributed.parallel_state import get_sp_world_size
from easel.runtime.layers.layernorm import apply_qk_norm
from easel.runtime.layers.parallel_attention import sequence_parallel_attention

# backend(query, key, value) -> out, all (B, L, H, D); backends that support padding masks also take
# `attn_mask=` (B, L_k) bool, see `attention`.
AttentionBackend = Callable[..., torch.Tensor]


def _torch_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch's fused scaled-dot-product attention; it wants heads before the sequence."""
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, L, D)
    if attn_mask is not None:
        attn_mask = attn_mask[:, None, None, :]  # (B, 1, 1, L_k): the same keys for every head and query
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
    return out.transpose(1, 2)  # (B, L, H, D)


# This registry is the seam where flash-attn kernels plug in. Ulysses wraps whichever is active; ring attention runs
# PyTorch's kernels that return the log-sum-exp it merges by (`parallel_attention.attention_with_lse`).
_BACKENDS: dict[str, AttentionBackend] = {"torch_sdpa": _torch_sdpa}
_active_backend = "torch_sdpa"


def available_attention_backends() -> list[str]:
    """The names `set_attention_backend` accepts."""
    return sorted(_BACKENDS)


def set_attention_backend(name: str) -> None:
    """Selects the backend every later `attention` call in this process uses."""
    global _active_backend
    if name not in _BACKENDS:
        available = ", ".join(available_attention_backends())
        raise EaselError(f"Unknown attention backend {name!r}; available: {available}.")
    _active_backend = name


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention over (B, L, H, D) tensors, returning (B, L, H, D).

    attn_mask: optional key-padding mask (B, L_k), bool, True for the keys a sample attends to (every query of the
    sample sees the same keys; each sample must keep at least one). None means full attention, the fast path.

    Under sequence parallelism the tensors hold this rank's tokens (`easel.runtime.distributed.SequenceShard`) and
    the keys are every rank's: Ulysses and/or ring attention (`parallel_attention`) around the active backend.
    """
    if get_sp_world_size() > 1:
        return sequence_parallel_attention(query, key, value, attn_mask, _BACKENDS[_active_backend])
    return cross_attention(query, key, value, attn_mask)  # one process: the keys are all here


def cross_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of this rank's queries to keys that every rank holds whole (a text prompt that is not sharded):
    local under sequence parallelism too, since each query already sees every key. Shapes as in `attention`."""
    backend = _BACKENDS[_active_backend]
    if attn_mask is None:
        return backend(query, key, value)
    return backend(query, key, value, attn_mask=attn_mask)


def project_qkv(
    x: torch.Tensor,
    to_q: torch.nn.Module,
    to_k: torch.nn.Module,
    to_v: torch.nn.Module,
    q_norm: torch.nn.Module | None,
    k_norm: torch.nn.Module | None,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projects x (B, L, D) to per-head query, key, value (B, L, H, head_dim), with qk-norm when norms are given."""
    split = (-1, head_dim)  # the head count follows from the width, which tensor parallelism will shard
    query, key = to_q(x).unflatten(-1, split), to_k(x).unflatten(-1, split)
    if q_norm is not None:
        query, key = apply_qk_norm(query, key, q_norm, k_norm)
    return query, key, to_v(x).unflatten(-1, split)
