"""The layer library every Easel DiT is written against; fused kernels and parallelism land here."""

from easel.runtime.layers.attention import (
    active_attention_backend,
    attention,
    attention_is_lossy,
    available_attention_backends,
    cross_attention,
    exact_attention,
    project_qkv,
    resolve_attention_backend,
    set_attention_backend,
)
from easel.runtime.layers.embeddings import MLPEmbedder, timestep_embedding
from easel.runtime.layers.kernel_backend import active_kernel_backend, set_kernel_backend
from easel.runtime.layers.kv_cache import ContextKV, KVCache
from easel.runtime.layers.layernorm import (
    AdaLNContinuous,
    LayerNormScaleShift,
    ParallelRMSNorm,
    RMSNorm,
    RMSNormCastBeforeWeight,
    RMSNormScaleShift,
    apply_qk_norm,
    apply_qk_norm_rope,
    clip_fp16,
    gated_residual,
    modulate,
)
from easel.runtime.layers.linear import ColumnParallelLinear, RowParallelLinear
from easel.runtime.layers.mlp import FeedForward, gelu_tanh
from easel.runtime.layers.rotary import (
    apply_rotary_emb,
    multi_axis_rope_frequencies,
    polar_rope_frequencies,
    rope_frequencies,
    split_rope,
)

__all__ = [
    "AdaLNContinuous",
    "ColumnParallelLinear",
    "ContextKV",
    "FeedForward",
    "KVCache",
    "LayerNormScaleShift",
    "MLPEmbedder",
    "ParallelRMSNorm",
    "RMSNorm",
    "RMSNormCastBeforeWeight",
    "RMSNormScaleShift",
    "RowParallelLinear",
    "active_kernel_backend",
    "apply_qk_norm",
    "apply_qk_norm_rope",
    "apply_rotary_emb",
    "clip_fp16",
    "gated_residual",
    "gelu_tanh",
    "modulate",
    "active_attention_backend",
    "attention",
    "attention_is_lossy",
    "available_attention_backends",
    "cross_attention",
    "exact_attention",
    "multi_axis_rope_frequencies",
    "project_qkv",
    "resolve_attention_backend",
    "polar_rope_frequencies",
    "rope_frequencies",
    "set_attention_backend",
    "set_kernel_backend",
    "split_rope",
    "timestep_embedding",
]
