"""FLUX.2, Black Forest Labs' second rectified-flow MMDiT, written against Easel's layer library.

The shape of FLUX.1 (`flux.py`): double-stream blocks over text and image, then single-stream blocks over both.
What changed: the conditioning (timestep, and guidance where distilled; no pooled text) is projected to its adaLN
vectors once per stream kind and shared by every block, instead of a projection per block; the MLPs are SwiGLU;
no layer has a bias; positions have four rotary axes (time, row, column, and a reference-image index) at theta
2000; a single-stream block fuses its q, k, v and MLP input into one projection, and its attention and MLP output
into another. Module names mirror Diffusers' `Flux2Transformer2DModel`, so its checkpoints load strictly.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from easel.configs.models.dits.flux2 import Flux2DitConfig
from easel.runtime.distributed import SequenceShard, split_streams, streams_key_mask
from easel.runtime.layers import (
    AdaLNContinuous,
    ColumnParallelLinear,
    LayerNormScaleShift,
    MLPEmbedder,
    RMSNorm,
    RowParallelLinear,
    apply_qk_norm_rope,
    attention,
    clip_fp16,
    gated_residual,
    multi_axis_rope_frequencies,
    timestep_embedding,
)
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT
from easel.runtime.models.dits.flux import JointAttention

FreqsCis = tuple[torch.Tensor, torch.Tensor]
Modulation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (shift, scale, gate), each (B, D)


#################################################################################
#                      Conditioning: timestep and guidance                      #
#################################################################################


class Flux2RotaryEmbedding(nn.Module):
    """Maps position ids (L, 4) = (time, row, column, reference index) to (cos, sin), each (L, head_dim)."""

    def __init__(self, axes_dims: tuple[int, ...], theta: float):
        super().__init__()
        self.axes_dims, self.theta = tuple(axes_dims), theta

    def forward(self, position_ids: torch.Tensor) -> FreqsCis:
        return multi_axis_rope_frequencies(position_ids, self.axes_dims, self.theta)


class TimeGuidanceEmbedding(nn.Module):
    """The conditioning vector: MLP(sinusoid(t)) [+ MLP(sinusoid(guidance)) for guidance-distilled checkpoints]."""

    def __init__(self, sinusoid_dim: int, dim: int, guidance_embeds: bool):
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.timestep_embedder = MLPEmbedder(sinusoid_dim, dim, bias=False)
        self.guidance_embedder = MLPEmbedder(sinusoid_dim, dim, bias=False) if guidance_embeds else None

    def forward(self, timestep: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        cond = self.timestep_embedder(timestep_embedding(timestep, self.sinusoid_dim).to(timestep.dtype))  # (B, D)
        if self.guidance_embedder is not None:
            cond = cond + self.guidance_embedder(timestep_embedding(guidance, self.sinusoid_dim).to(guidance.dtype))
        return cond


class SharedModulation(nn.Module):
    """adaLN vectors from the conditioning, computed once per forward and shared by every block of a kind."""

    def __init__(self, dim: int, num_sets: int):
        super().__init__()
        self.num_sets = num_sets
        self.linear = nn.Linear(dim, 3 * num_sets * dim, bias=False)

    def forward(self, cond: torch.Tensor) -> list[Modulation]:
        chunks = self.linear(F.silu(cond)).chunk(3 * self.num_sets, dim=1)  # each (B, D)
        return [tuple(chunks[3 * i : 3 * i + 3]) for i in range(self.num_sets)]


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """SiLU(first half) * second half, over the last dimension."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


class SwiGLUFeedForward(nn.Module):
    """dim -> 2 x hidden (gate and up, fused) -> SwiGLU -> dim, without biases."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear_in = ColumnParallelLinear(dim, 2 * hidden_dim, bias=False, segments=(hidden_dim, hidden_dim))
        self.linear_out = RowParallelLinear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_out(swiglu(self.linear_in(x)))


#################################################################################
#                                 FLUX.2 blocks                                 #
#################################################################################


class Flux2DoubleStreamBlock(nn.Module):
    """MMDiT block: image and text streams with their own weights, mixed only by a joint attention."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden_dim: int, eps: float):
        super().__init__()
        self.norm = LayerNormScaleShift(dim, eps=eps)  # parameter-free: one serves all four norms
        self.attn = JointAttention(dim, num_heads, head_dim, with_context_stream=True, bias=False)
        self.ff = SwiGLUFeedForward(dim, mlp_hidden_dim)
        self.ff_context = SwiGLUFeedForward(dim, mlp_hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        image_mods: list[Modulation],
        text_mods: list[Modulation],
        freqs_cis: FreqsCis,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: image tokens (B, L, D); context: text tokens (B, T, D); *_mods: (attention, MLP) modulations."""
        (shift, scale, gate), (mlp_shift, mlp_scale, mlp_gate) = image_mods
        (c_shift, c_scale, c_gate), (c_mlp_shift, c_mlp_scale, c_mlp_gate) = text_mods
        attn_out, context_attn_out = self.attn(
            self.norm(x, shift, scale), freqs_cis, context=self.norm(context, c_shift, c_scale), attn_mask=attn_mask
        )
        x = gated_residual(x, gate, attn_out)
        x = gated_residual(x, mlp_gate, self.ff(self.norm(x, mlp_shift, mlp_scale)))
        context = gated_residual(context, c_gate, context_attn_out)
        context = gated_residual(context, c_mlp_gate, self.ff_context(self.norm(context, c_mlp_shift, c_mlp_scale)))
        return x, clip_fp16(context)


class ParallelSelfAttention(nn.Module):
    """A single-stream block's attention and SwiGLU MLP from one fused input projection and one fused output."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden_dim: int, eps: float):
        super().__init__()
        self.head_dim = head_dim
        inner_dim = num_heads * head_dim
        # Registration order follows Diffusers' so state-dict keys come out in the same order.
        self.to_qkv_mlp_proj = ColumnParallelLinear(
            dim, 3 * inner_dim + 2 * mlp_hidden_dim, bias=False, segments=(inner_dim,) * 3 + (mlp_hidden_dim,) * 2
        )
        self.norm_q = RMSNorm(head_dim, eps=eps)
        self.norm_k = RMSNorm(head_dim, eps=eps)
        self.to_out = RowParallelLinear(
            inner_dim + mlp_hidden_dim, dim, bias=False, segments=(inner_dim, mlp_hidden_dim)
        )
        # This rank's q, k, v features (the rest of its fused output is its MLP share), whatever the TP size.
        self.qkv_width = 3 * inner_dim * self.to_qkv_mlp_proj.out_features // (3 * inner_dim + 2 * mlp_hidden_dim)

    def forward(self, x: torch.Tensor, freqs_cis: FreqsCis, attn_mask: torch.Tensor | None) -> torch.Tensor:
        fused = self.to_qkv_mlp_proj(x)  # (B, L, 3 inner + 2 mlp), this rank's share of each segment
        qkv, mlp = fused.split([self.qkv_width, fused.shape[-1] - self.qkv_width], dim=-1)
        query, key, value = (t.unflatten(-1, (-1, self.head_dim)) for t in qkv.chunk(3, dim=-1))  # (B, L, H, hd)
        query, key = apply_qk_norm_rope(query, key, self.norm_q, self.norm_k, *freqs_cis)
        out = attention(query, key, value, attn_mask).flatten(2)  # (B, L, inner)
        return self.to_out(torch.cat([out, swiglu(mlp)], dim=-1))


class Flux2SingleStreamBlock(nn.Module):
    """Single-stream block over text + image tokens: attention and MLP in parallel from one modulated norm."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden_dim: int, eps: float):
        super().__init__()
        self.norm = LayerNormScaleShift(dim, eps=eps)
        self.attn = ParallelSelfAttention(dim, num_heads, head_dim, mlp_hidden_dim, eps)

    def forward(
        self, x: torch.Tensor, mod: Modulation, freqs_cis: FreqsCis, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: text + image tokens (B, T + L, D)."""
        shift, scale, gate = mod
        x = gated_residual(x, gate, self.attn(self.norm(x, shift, scale), freqs_cis, attn_mask))
        return clip_fp16(x)


#################################################################################
#                                 FLUX.2 model                                  #
#################################################################################


@dataclasses.dataclass
class Flux2Stack(BlockStack):
    """FLUX.2's state between blocks: streams = [image (B, L / N, D), text (B, T / N, D)]."""

    cond: torch.Tensor  # (B, D), for the output adaLN
    image_mods: list[Modulation]  # the double-stream blocks' image (attention, MLP) modulations
    text_mods: list[Modulation]
    single_mod: Modulation
    freqs_cis: FreqsCis  # this rank's text then image positions
    attn_mask: torch.Tensor | None  # only sequence parallelism's padding sets it


class Flux2Transformer2DModel(BlockStackDiT):
    """The FLUX.2 transformer: packed latents (and reference-image tokens), text embeddings, timestep -> velocity."""

    cache_family = "flux2"
    block_lists = ("transformer_blocks", "single_transformer_blocks")

    def __init__(self, config: Flux2DitConfig):
        super().__init__()
        self.config = config
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        dim, mlp_hidden_dim, eps = heads * head_dim, int(heads * head_dim * config.mlp_ratio), config.eps
        if sum(config.axes_dims_rope) != head_dim:
            raise ValueError(f"axes_dims_rope {config.axes_dims_rope} must sum to attention_head_dim {head_dim}")

        # Parameter-free: the pipeline calls it once per request and passes (cos, sin) to every step.
        self.rotary_emb = Flux2RotaryEmbedding(config.axes_dims_rope, config.rope_theta)
        self.time_guidance_embed = TimeGuidanceEmbedding(config.timestep_guidance_channels, dim, config.guidance_embeds)
        self.double_stream_modulation_img = SharedModulation(dim, num_sets=2)
        self.double_stream_modulation_txt = SharedModulation(dim, num_sets=2)
        self.single_stream_modulation = SharedModulation(dim, num_sets=1)
        self.x_embedder = nn.Linear(config.in_channels, dim, bias=False)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim, bias=False)

        self.transformer_blocks = nn.ModuleList(
            [Flux2DoubleStreamBlock(dim, heads, head_dim, mlp_hidden_dim, eps) for _ in range(config.num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [Flux2SingleStreamBlock(dim, heads, head_dim, mlp_hidden_dim, eps) for _ in range(config.num_single_layers)]
        )

        self.norm_out = AdaLNContinuous(dim, eps=eps, bias=False)
        self.proj_out = nn.Linear(
            dim, config.patch_size * config.patch_size * (config.out_channels or config.in_channels), bias=False
        )

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks) + len(self.single_transformer_blocks)

    def embed(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        freqs_cis: FreqsCis,
        guidance: torch.Tensor | None = None,
    ) -> Flux2Stack:
        """
        hidden_states: packed latents (B, L, in_channels), reference-image tokens after the image's;
        encoder_hidden_states: stacked text-encoder hidden states (B, T, joint_attention_dim);
        timestep: sigma in [0, 1], (B,); freqs_cis: rotary (cos, sin) of the T text then L image positions, each
        (T + L, head_dim); guidance: guidance scale (B,), required by guidance-distilled checkpoints.
        The model's output is the predicted velocity of every token (B, L, out_channels); the caller keeps the
        image's.
        """
        if self.config.guidance_embeds and guidance is None:
            raise ValueError("this FLUX.2 checkpoint is guidance-distilled and needs a guidance tensor")
        x = self.x_embedder(hidden_states)  # (B, L, D)
        # The embedders were trained on sigma * 1000; scale after casting to the model dtype, like Diffusers.
        timestep = timestep.to(x.dtype) * 1000
        guidance = guidance.to(x.dtype) * 1000 if self.config.guidance_embeds else None
        cond = self.time_guidance_embed(timestep, guidance)  # (B, D)
        context = self.context_embedder(encoder_hidden_states)  # (B, T, D)

        # Sequence parallelism as in FLUX.1: both streams split across the SP group, each on its own.
        shards = (SequenceShard.of(context.shape[1]), SequenceShard.of(x.shape[1]))  # text first, as freqs_cis
        context, x = shards[0].split(context), shards[1].split(x)
        freqs_cis = tuple(split_streams(table, shards, dim=0) for table in freqs_cis)
        attn_mask = streams_key_mask(shards, x.shape[0], x.device)  # None unless a stream is padded
        return Flux2Stack(
            [x, context],
            shards[1],
            cond,
            self.double_stream_modulation_img(cond),
            self.double_stream_modulation_txt(cond),
            self.single_stream_modulation(cond)[0],
            freqs_cis,
            attn_mask,
        )

    def run_blocks(self, stack: Flux2Stack, start: int, end: int) -> None:
        x, context = stack.streams
        for block in self.transformer_blocks[start:end]:
            x, context = block(x, context, stack.image_mods, stack.text_mods, stack.freqs_cis, stack.attn_mask)

        num_double = len(self.transformer_blocks)
        single = self.single_transformer_blocks[max(start - num_double, 0) : max(end - num_double, 0)]
        if len(single):
            text_len = context.shape[1]
            joint = torch.cat([context, x], dim=1)  # (B, T + L, D): per-token blocks, one concatenation per span
            for block in single:
                joint = block(joint, stack.single_mod, stack.freqs_cis, stack.attn_mask)
            context, x = joint[:, :text_len], joint[:, text_len:]
        stack.streams = [x, context]

    def finish(self, stack: Flux2Stack) -> torch.Tensor:
        out = self.proj_out(self.norm_out(stack.streams[0], stack.cond))  # (B, L / N, out_channels)
        return stack.shard.gather(out)

    def modulated_input(self, stack: Flux2Stack) -> torch.Tensor:
        shift, scale, _ = stack.image_mods[0]
        return self.transformer_blocks[0].norm(stack.streams[0], shift, scale)


EntryClass = Flux2Transformer2DModel
