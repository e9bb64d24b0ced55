"""Attention behind a backend dispatcher: every DiT calls one function, whatever kernel runs it."""

import contextlib
import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from easel.errors import EaselError
from easel.runtime.distributed.parallel_state import get_sp_world_size
from easel.runtime.layers.kv_cache import KVCache
from easel.runtime.layers.layernorm import apply_qk_norm, apply_qk_norm_rope
from easel.runtime.layers.parallel_attention import sequence_parallel_attention

# backend(query, key, value) -> out, all (B, L, H, D); backends that support masks also take `attn_mask=`, bool,
# (B, L_k) or (B, L_q, L_k), see `attention`.
AttentionBackend = Callable[..., torch.Tensor]


def _torch_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch's fused scaled-dot-product attention; it wants heads before the sequence."""
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, L, D)
    if attn_mask is not None:
        # (B, 1, 1, L_k): the same keys for every head and query; (B, 1, L_q, L_k): the same for every head.
        attn_mask = attn_mask[:, None, None, :] if attn_mask.dim() == 2 else attn_mask[:, None]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
    return out.transpose(1, 2)  # (B, L, H, D)


def _flash_attn(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """FlashAttention 3 (`flash_attn_interface`, Hopper) where installed, else FlashAttention 2; (B, L, H, D) is
    their own layout. Neither takes a key-padding mask without repacking into variable-length batches, so masked
    calls (only sequence parallelism's padding and batches of different prompt lengths make them) run PyTorch's."""
    if attn_mask is not None:
        return _torch_sdpa(query, key, value, attn_mask)
    return _flash_attn_function()(query, key, value)


@functools.cache
def _flash_attn_function() -> Callable[..., torch.Tensor]:
    """flash_attn_func of FlashAttention 3 if importable, else 2; its output alone (FA3 betas return (out, lse))."""
    try:
        from flash_attn_interface import flash_attn_func  # FlashAttention 3
    except ImportError:
        from flash_attn import flash_attn_func

    def run(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = flash_attn_func(query, key, value)
        return out[0] if isinstance(out, tuple) else out

    return run


def _sage_attn(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """SageAttention: int8 q.k and fp8/fp16 p.v, lossy, so its cost shows in a quality check; masked calls as in
    `_flash_attn`."""
    if attn_mask is not None:
        return _torch_sdpa(query, key, value, attn_mask)
    from sageattention import sageattn

    return sageattn(query, key, value, tensor_layout="NHD", is_causal=False)  # NHD: (B, L, H, D)


@dataclasses.dataclass(frozen=True)
class Backend:
    """An attention kernel: its function, the package it needs (None: part of torch), whether it is exact."""

    run: AttentionBackend
    packages: tuple[str, ...] = ()  # modules it can import, any one of them
    pip_name: str | None = None  # what to install for it
    lossy: bool = False
    cuda_only: bool = False

    def missing(self) -> str | None:
        """Why this backend cannot run in this process, or None."""
        if self.cuda_only and not torch.cuda.is_available():
            return "it needs a CUDA GPU"
        if self.packages and all(importlib.util.find_spec(package) is None for package in self.packages):
            return f"its package is not installed (pip install {self.pip_name})"
        return None


# The seam where attention kernels plug in. Ulysses wraps whichever is active; ring attention merges partial outputs
# by their log-sum-exp and runs PyTorch's kernels that return it (`parallel_attention.attention_with_lse`).
_BACKENDS: dict[str, Backend] = {
    "torch_sdpa": Backend(_torch_sdpa),
    "flash_attn": Backend(_flash_attn, ("flash_attn_interface", "flash_attn"), "flash-attn", cuda_only=True),
    "sage_attn": Backend(_sage_attn, ("sageattention",), "sageattention", lossy=True, cuda_only=True),
}
# "auto" picks the first of these that can run: FlashAttention beats PyTorch's SDPA kernels on NVIDIA GPUs, and
# SageAttention, though faster, is never chosen for the user since it changes the output.
_AUTO_ORDER = ("flash_attn", "torch_sdpa")
_active_backend = "torch_sdpa"


def available_attention_backends() -> list[str]:
    """The names `set_attention_backend` accepts ("auto" besides)."""
    return sorted(_BACKENDS)


def resolve_attention_backend(name: str) -> str:
    """The backend `name` selects in this process: "auto" resolved; a clear error for unknown or missing ones."""
    if name == "auto":
        return next(candidate for candidate in _AUTO_ORDER if _BACKENDS[candidate].missing() is None)
    if name not in _BACKENDS:
        available = ", ".join(["auto", *available_attention_backends()])
        raise EaselError(f"Unknown attention backend {name!r}; available: {available}.")
    reason = _BACKENDS[name].missing()
    if reason is not None:
        raise EaselError(f"Attention backend {name!r} cannot run here: {reason}.")
    return name


def set_attention_backend(name: str) -> None:
    """Selects the backend every later `attention` call in this process uses."""
    global _active_backend
    _active_backend = resolve_attention_backend(name)


def active_attention_backend() -> str:
    """The name of the backend `attention` runs now."""
    return _active_backend


def attention_is_lossy() -> bool:
    """Whether the active backend approximates softmax attention (a quality check then runs the exact one)."""
    return _BACKENDS[_active_backend].lossy


@contextlib.contextmanager
def exact_attention() -> Iterator[None]:
    """Runs the block with PyTorch's exact kernels whatever backend is active: a quality check's exact path."""
    global _active_backend
    previous, _active_backend = _active_backend, ("torch_sdpa" if attention_is_lossy() else _active_backend)
    try:
        yield
    finally:
        _active_backend = previous


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    kv_cache: KVCache | None = None,
) -> torch.Tensor:
    """Softmax attention over (B, L, H, D) tensors, returning (B, L, H, D).

    attn_mask: optional mask, bool, True for the keys a query attends to: a key-padding mask (B, L_k), every query of
    a sample seeing the same keys, or one row per query (B, L_q, L_k) (one process only); each query must keep at
    least one key. None means full attention, the fast path.

    kv_cache: the keys and values of earlier forwards of the request, attended to before these (and these recorded
    when the cache says so): a block-causal model's frames so far.

    Under sequence parallelism the tensors hold this rank's tokens (`easel.runtime.distributed.SequenceShard`) and
    the keys are every rank's: Ulysses and/or ring attention (`parallel_attention`) around the active backend.
    """
    if get_sp_world_size() > 1:
        return sequence_parallel_attention(query, key, value, attn_mask, _BACKENDS[_active_backend].run, kv_cache)
    if kv_cache is not None:
        key, value = kv_cache.extend(key, value)
    return cross_attention(query, key, value, attn_mask)  # one process: the keys are all here


def cross_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of this rank's queries to keys that every rank holds whole (a text prompt that is not sharded):
    local under sequence parallelism too, since each query already sees every key. Shapes as in `attention`."""
    backend = _BACKENDS[_active_backend].run
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
    freqs_cis: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projects x (B, L, D) to per-head query, key, value (B, L, H, head_dim), with qk-norm when norms are given and
    the rotary embedding of x's positions when freqs_cis (cos, sin) is (one fused pass with the Triton backend)."""
    split = (-1, head_dim)  # the head count follows from the width, which tensor parallelism will shard
    query, key = to_q(x).unflatten(-1, split), to_k(x).unflatten(-1, split)
    if freqs_cis is not None:
        query, key = apply_qk_norm_rope(query, key, q_norm, k_norm, *freqs_cis)
    elif q_norm is not None:
        query, key = apply_qk_norm(query, key, q_norm, k_norm)
    return query, key, to_v(x).unflatten(-1, split)
