"""FLUX.1, the rectified-flow MMDiT of Black Forest Labs, written against Easel's layer library.

Text and image tokens first run through double-stream blocks (separate weights per stream, one joint
attention), then through single-stream blocks over the concatenated sequence (attention and MLP in parallel).
Every block is modulated (adaLN) by one conditioning vector built from the timestep, the guidance scale and
the pooled text embedding. Module names mirror the keys of Diffusers' `FluxTransformer2DModel` checkpoints, so
those load with `load_state_dict(strict=True)`; nothing is kept in buffers, so a model built on the meta
device is complete once its checkpoint is assigned.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from easel.configs.models.dits.flux import FluxDitConfig
from easel.runtime.distributed import SequenceShard, split_streams, streams_key_mask
from easel.runtime.layers import (
    AdaLNContinuous,
    ColumnParallelLinear,
    FeedForward,
    LayerNormScaleShift,
    MLPEmbedder,
    RMSNorm,
    RowParallelLinear,
    attention,
    clip_fp16,
    gated_residual,
    gelu_tanh,
    multi_axis_rope_frequencies,
    project_qkv,
    split_rope,
    timestep_embedding,
)
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT

# The sinusoid width the timestep and guidance embedders start from (fixed by the FLUX checkpoints).
TIMESTEP_SINUSOID_DIM = 256
ROPE_THETA = 10000.0

FreqsCis = tuple[torch.Tensor, torch.Tensor]


#################################################################################
#                     Conditioning: timestep, guidance, text                    #
#################################################################################


class FluxRotaryEmbedding(nn.Module):
    """Maps position ids (L, 3) = (index, row, column), zeros for text, to (cos, sin), each (L, head_dim)."""

    def __init__(self, axes_dims: tuple[int, ...], theta: float = ROPE_THETA):
        super().__init__()
        self.axes_dims = tuple(axes_dims)
        self.theta = theta

    def forward(self, position_ids: torch.Tensor) -> FreqsCis:
        return multi_axis_rope_frequencies(position_ids, self.axes_dims, self.theta)


class TimeTextEmbedding(nn.Module):
    """The conditioning vector: MLP(sinusoid(t)) [+ MLP(sinusoid(guidance))] + MLP(pooled text embedding)."""

    def __init__(self, dim: int, pooled_projection_dim: int, guidance_embeds: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(TIMESTEP_SINUSOID_DIM, dim)
        # Guidance-distilled checkpoints (FLUX.1-dev) take the guidance scale as input instead of running CFG.
        self.guidance_embedder = MLPEmbedder(TIMESTEP_SINUSOID_DIM, dim) if guidance_embeds else None
        self.text_embedder = MLPEmbedder(pooled_projection_dim, dim)

    def forward(
        self, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled_projections: torch.Tensor
    ) -> torch.Tensor:
        # The sinusoid is float32; cast it to the weights' dtype (the pooled embedding's) before the MLP.
        dtype = pooled_projections.dtype
        cond = self.timestep_embedder(timestep_embedding(timestep, TIMESTEP_SINUSOID_DIM).to(dtype))  # (B, D)
        if self.guidance_embedder is not None:
            cond = cond + self.guidance_embedder(timestep_embedding(guidance, TIMESTEP_SINUSOID_DIM).to(dtype))
        return cond + self.text_embedder(pooled_projections)


#################################################################################
#                              Block building pieces                            #
#################################################################################


class AdaLNZero(nn.Module):
    """adaLN-Zero: modulates a LayerNorm with the conditioning and hands back the block's other vectors."""

    def __init__(self, dim: int, num_vectors: int):
        super().__init__()
        self.num_vectors = num_vectors
        self.linear = nn.Linear(dim, num_vectors * dim)
        self.norm = LayerNormScaleShift(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # One (B, D) vector per chunk; the first two modulate this norm, the rest (gates, the MLP's
        # shift/scale) are the caller's.
        shift, scale, *rest = self.linear(F.silu(cond)).chunk(self.num_vectors, dim=1)
        return self.norm(x, shift, scale), rest


class JointAttention(nn.Module):
    """Attention over text + image tokens with qk-norm and rotary embeddings; separate weights per stream."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, with_context_stream: bool, bias: bool = True):
        super().__init__()
        self.head_dim = head_dim
        inner_dim = num_heads * head_dim
        # Registration order follows Diffusers' so state-dict keys come out in the same order.
        self.norm_q = RMSNorm(head_dim, eps=1e-6)
        self.norm_k = RMSNorm(head_dim, eps=1e-6)
        self.to_q = ColumnParallelLinear(dim, inner_dim, bias)
        self.to_k = ColumnParallelLinear(dim, inner_dim, bias)
        self.to_v = ColumnParallelLinear(dim, inner_dim, bias)
        if with_context_stream:
            # A list so the key is `to_out.0`, as in Diffusers' checkpoints (its index 1 is a no-op dropout).
            self.to_out = nn.ModuleList([RowParallelLinear(inner_dim, dim, bias)])
            # Double-stream blocks: the text tokens get their own projections, norms and output layer.
            self.norm_added_q = RMSNorm(head_dim, eps=1e-6)
            self.norm_added_k = RMSNorm(head_dim, eps=1e-6)
            self.add_q_proj = ColumnParallelLinear(dim, inner_dim, bias)
            self.add_k_proj = ColumnParallelLinear(dim, inner_dim, bias)
            self.add_v_proj = ColumnParallelLinear(dim, inner_dim, bias)
            self.to_add_out = RowParallelLinear(inner_dim, dim, bias)

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: FreqsCis,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Single-stream: x is the whole (B, T + L, D) sequence; returns the (B, T + L, inner) attention.
        Double-stream: x is the (B, L, D) image, context the (B, T, D) text; returns both projected outputs.
        attn_mask: (B, T + L) key mask, or None; only sequence parallelism's padding sets it.
        """
        if context is None:
            projections = (self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
            query, key, value = project_qkv(x, *projections, self.head_dim, freqs_cis)
        else:
            # Text tokens first, matching the order of freqs_cis; each stream rotated as it is projected.
            text_freqs, image_freqs = split_rope(freqs_cis, context.shape[1])
            text_projections = (self.add_q_proj, self.add_k_proj, self.add_v_proj, self.norm_added_q, self.norm_added_k)
            context_qkv = project_qkv(context, *text_projections, self.head_dim, text_freqs)
            image_projections = (self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
            image_qkv = project_qkv(x, *image_projections, self.head_dim, image_freqs)
            query, key, value = (torch.cat([c, i], dim=1) for c, i in zip(context_qkv, image_qkv, strict=True))
        out = attention(query, key, value, attn_mask).flatten(2)  # (B, T + L, inner)
        if context is None:
            return out

        context_out, out = out.split([context.shape[1], x.shape[1]], dim=1)
        # The split halves are strided views; the matmul would copy them anyway, and copying them first (as
        # Diffusers does) keeps the kernel choice, and so bf16 results, identical to Diffusers'.
        return self.to_out[0](out.contiguous()), self.to_add_out(context_out.contiguous())


#################################################################################
#                                  FLUX blocks                                  #
#################################################################################


class FluxDoubleStreamBlock(nn.Module):
    """MMDiT block: image and text streams with their own weights, mixed only by a joint attention."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.norm1 = AdaLNZero(dim, num_vectors=6)
        self.norm1_context = AdaLNZero(dim, num_vectors=6)
        self.attn = JointAttention(dim, num_heads, head_dim, with_context_stream=True)
        self.norm2 = LayerNormScaleShift(dim, eps=1e-6)
        self.ff = FeedForward(dim)
        self.norm2_context = LayerNormScaleShift(dim, eps=1e-6)
        self.ff_context = FeedForward(dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        cond: torch.Tensor,
        freqs_cis: FreqsCis,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: image tokens (B, L, D); context: text tokens (B, T, D); cond: (B, D). Returns (x, context)."""
        x_norm, (gate_attn, shift_mlp, scale_mlp, gate_mlp) = self.norm1(x, cond)
        c_norm, (c_gate_attn, c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.norm1_context(context, cond)
        attn_out, context_attn_out = self.attn(x_norm, freqs_cis, context=c_norm, attn_mask=attn_mask)

        # Gated residuals: the gates are (B, D), shared by all tokens of a sample.
        x = gated_residual(x, gate_attn, attn_out)
        x = gated_residual(x, gate_mlp, self.ff(self.norm2(x, shift_mlp, scale_mlp)))

        context = gated_residual(context, c_gate_attn, context_attn_out)
        context_mlp = self.ff_context(self.norm2_context(context, c_shift_mlp, c_scale_mlp))
        context = gated_residual(context, c_gate_mlp, context_mlp)
        return x, clip_fp16(context)


class FluxSingleStreamBlock(nn.Module):
    """Single-stream block over text + image tokens: attention and MLP in parallel from one modulated norm."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLNZero(dim, num_vectors=3)
        self.proj_mlp = ColumnParallelLinear(dim, mlp_hidden_dim)
        # One output projection for both branches; its input is [attention | MLP], two separately sharded
        # halves under tensor parallelism.
        self.proj_out = RowParallelLinear(dim + mlp_hidden_dim, dim, segments=(dim, mlp_hidden_dim))
        self.attn = JointAttention(dim, num_heads, head_dim, with_context_stream=False)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, freqs_cis: FreqsCis, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: text + image tokens (B, T + L, D); cond: (B, D)."""
        x_norm, (gate,) = self.norm(x, cond)
        mlp_out = gelu_tanh(self.proj_mlp(x_norm))  # (B, T + L, 4 D)
        attn_out = self.attn(x_norm, freqs_cis, attn_mask=attn_mask)  # (B, T + L, D)
        x = gated_residual(x, gate, self.proj_out(torch.cat([attn_out, mlp_out], dim=2)))
        return clip_fp16(x)


#################################################################################
#                                 FLUX.1 model                                  #
#################################################################################


@dataclasses.dataclass
class FluxStack(BlockStack):
    """FLUX's state between blocks: streams = [image (B, L / N, D), text (B, T / N, D)]."""

    cond: torch.Tensor  # (B, D)
    freqs_cis: FreqsCis  # this rank's text then image positions
    attn_mask: torch.Tensor | None  # only sequence parallelism's padding sets it


class FluxTransformer2DModel(BlockStackDiT):
    """The FLUX.1 transformer: packed latents, text embeddings and conditioning -> velocity."""

    cache_family = "flux"
    block_lists = ("transformer_blocks", "single_transformer_blocks")

    def __init__(self, config: FluxDitConfig):
        super().__init__()
        self.config = config
        dim = config.num_attention_heads * config.attention_head_dim
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        out_channels = config.out_channels or config.in_channels
        if sum(config.axes_dims_rope) != head_dim:
            raise ValueError(f"axes_dims_rope {config.axes_dims_rope} must sum to attention_head_dim {head_dim}")

        # Parameter-free: the pipeline calls it once per request and passes (cos, sin) to every step.
        self.rotary_emb = FluxRotaryEmbedding(config.axes_dims_rope)
        self.time_text_embed = TimeTextEmbedding(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(config.in_channels, dim)

        self.transformer_blocks = nn.ModuleList(
            [FluxDoubleStreamBlock(dim, heads, head_dim) for _ in range(config.num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [FluxSingleStreamBlock(dim, heads, head_dim) for _ in range(config.num_single_layers)]
        )

        self.norm_out = AdaLNContinuous(dim)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * out_channels)

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks) + len(self.single_transformer_blocks)

    def embed(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        freqs_cis: FreqsCis,
        guidance: torch.Tensor | None = None,
    ) -> FluxStack:
        """
        hidden_states: packed latents (B, L, in_channels);
        encoder_hidden_states: T5 embeddings (B, T, joint_attention_dim);
        pooled_projections: CLIP pooled embedding (B, pooled_projection_dim); timestep: sigma in [0, 1], (B,);
        freqs_cis: rotary (cos, sin) of the T text then L image positions, each (T + L, head_dim);
        guidance: guidance scale (B,), required by guidance-distilled checkpoints and ignored by others.
        The model's output is the predicted velocity (B, L, out_channels).
        """
        if self.config.guidance_embeds and guidance is None:
            raise ValueError("this FLUX checkpoint is guidance-distilled and needs a guidance tensor")

        x = self.x_embedder(hidden_states)  # (B, L, D)
        # The embedders were trained on sigma * 1000; scale after casting to the model dtype, like Diffusers.
        timestep = timestep.to(x.dtype) * 1000
        guidance = guidance.to(x.dtype) * 1000 if self.config.guidance_embeds else None
        cond = self.time_text_embed(timestep, guidance, pooled_projections)  # (B, D)
        context = self.context_embedder(encoder_hidden_states)  # (B, T, D)

        # Sequence parallelism: text and image tokens are both split across the SP group, each stream on its own
        # (padded where it does not divide), rather than the text replicated: every block is per-token but for
        # attention, which then needs no notion of streams, and the text's MLPs split too. At SP size 1 nothing moves.
        shards = (SequenceShard.of(context.shape[1]), SequenceShard.of(x.shape[1]))  # text first, as freqs_cis
        context, x = shards[0].split(context), shards[1].split(x)  # (B, T / N, D), (B, L / N, D)
        freqs_cis = tuple(split_streams(table, shards, dim=0) for table in freqs_cis)
        attn_mask = streams_key_mask(shards, x.shape[0], x.device)  # None unless a stream is padded
        return FluxStack([x, context], shards[1], cond, freqs_cis, attn_mask)

    def run_blocks(self, stack: FluxStack, start: int, end: int) -> None:
        x, context = stack.streams
        num_double = len(self.transformer_blocks)
        for block in self.transformer_blocks[start:end]:
            x, context = block(x, context, stack.cond, stack.freqs_cis, stack.attn_mask)

        single = self.single_transformer_blocks[max(start - num_double, 0) : max(end - num_double, 0)]
        if len(single):
            # The single-stream blocks are per-token apart from attention, so concatenating once per span (rather
            # than per block, as Diffusers does) gives the same result.
            text_len = context.shape[1]
            joint = torch.cat([context, x], dim=1)  # (B, T + L, D)
            for block in single:
                joint = block(joint, stack.cond, stack.freqs_cis, stack.attn_mask)
            context, x = joint[:, :text_len], joint[:, text_len:]
        stack.streams = [x, context]

    def finish(self, stack: FluxStack) -> torch.Tensor:
        out = self.proj_out(self.norm_out(stack.streams[0], stack.cond))  # (B, L / N, out_channels)
        return stack.shard.gather(out)  # the whole image from every rank's part, once, at the narrowest width

    def modulated_input(self, stack: FluxStack) -> torch.Tensor:
        return self.transformer_blocks[0].norm1(stack.streams[0], stack.cond)[0]


EntryClass = FluxTransformer2DModel
