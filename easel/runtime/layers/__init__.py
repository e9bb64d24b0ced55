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
from easel.runtime.layers.layernorm import (
    AdaLNContinuous,
    LayerNormScaleShift,
    ParallelRMSNorm,
    RMSNorm,
    RMSNormCastBeforeWeight,
    RMSNormScaleShift,
    apply_qk_norm,
    clip_fp16,
    modulate,
)
from easel.runtime.layers.linear import ColumnParallelLinear, RowParallelLinear
from easel.runtime.layers.mlp import FeedForward
from easel.runtime.layers.rotary import (
    apply_rotary_emb,
    multi_axis_rope_frequencies,
    polar_rope_frequencies,
    rope_frequencies,
)

__all__ = [
    "AdaLNContinuous",
    "ColumnParallelLinear",
    "FeedForward",
    "LayerNormScaleShift",
    "MLPEmbedder",
    "ParallelRMSNorm",
    "RMSNorm",
    "RMSNormCastBeforeWeight",
    "RMSNormScaleShift",
    "RowParallelLinear",
    "apply_qk_norm",
    "apply_rotary_emb",
    "clip_fp16",
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
    "timestep_embedding",
]
