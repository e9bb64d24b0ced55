"""Wan2.1 / Wan2.2, the video flow-matching DiT of Alibaba's Wan team, written against Easel's layer library.

Video latents (B, C, F, H, W) are cut into 1x2x2 patches, one token each, and run through identical blocks of
self-attention (3D rotary positions: frame, row, column), cross-attention to the UMT5 text embeddings (and, for
I2V, to CLIP image tokens through extra key/value projections) and an MLP. Self-attention and MLP are modulated
by the timestep (adaLN with a learned per-block table added to one shared projection); cross-attention is not.
Wan2.2-TI2V passes one timestep per token (the first frame of image-conditioned videos is already clean), so
every modulation vector may be per token. Module names mirror the keys of Diffusers' `WanTransformer3DModel`
checkpoints, so those load with `load_state_dict(strict=True)`; nothing is kept in buffers, so a model built on
the meta device is complete once its checkpoint is assigned.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from easel.configs.models.dits.wanvideo import WanDitConfig
from easel.runtime.distributed import SequenceShard, streams_key_mask
from easel.runtime.layers import (
    ColumnParallelLinear,
    ContextKV,
    KVCache,
    MLPEmbedder,
    RowParallelLinear,
    apply_qk_norm_rope,
    attention,
    gated_residual,
    multi_axis_rope_frequencies,
    timestep_embedding,
)
from easel.runtime.layers.attention import cross_attention
from easel.runtime.layers.layernorm import ParallelRMSNorm
from easel.runtime.layers.mlp import TanhGELUProjection
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT

ROPE_THETA = 10000.0
# The CLIP image embedder's LayerNorms keep torch's default eps (the blocks use the config's).
IMAGE_EMBEDDER_NORM_EPS = 1e-5

FreqsCis = tuple[torch.Tensor, torch.Tensor]


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """How Wan splits a head's rotary channels over (frame, row, column): rows and columns get 2 * (D // 6) each."""
    row_dim = col_dim = 2 * (head_dim // 6)
    return head_dim - row_dim - col_dim, row_dim, col_dim


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, rounded back to it (Wan keeps its norms in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def fp32_modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN in float32: norm(x) * (1 + scale) + shift, rounded to x's dtype; shift/scale (B, 1 or L, D)."""
    return (norm(x.float()) * (1 + scale) + shift).type_as(x)


#################################################################################
#                Conditioning: positions, timestep, text, image                 #
#################################################################################


class WanRotaryEmbedding(nn.Module):
    """Maps a latent video shape (frames, height, width) to the rotary (cos, sin), each (L, head_dim), of its
    patch grid in (frame, row, column) raster order. Parameter-free: compute once per request."""

    def __init__(self, head_dim: int, patch_size: tuple[int, int, int], theta: float = ROPE_THETA):
        super().__init__()
        self.axes_dims = rope_axes_dims(head_dim)
        self.patch_size = tuple(patch_size)
        self.theta = theta

    def forward(self, num_frames: int, height: int, width: int, device: torch.device | str | None = None) -> FreqsCis:
        p_t, p_h, p_w = self.patch_size
        grid = torch.meshgrid(
            torch.arange(num_frames // p_t, device=device),
            torch.arange(height // p_h, device=device),
            torch.arange(width // p_w, device=device),
            indexing="ij",
        )
        position_ids = torch.stack(grid, dim=-1).reshape(-1, 3)  # (L, 3) = (frame, row, column)
        # Integer positions, float64 angles, float32 cos/sin: the same numbers as Diffusers' precomputed tables.
        return multi_axis_rope_frequencies(position_ids, self.axes_dims, self.theta)


class TextProjection(nn.Module):
    """linear_1 -> tanh-GELU -> linear_2: UMT5 embeddings to the model width (Diffusers' PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class GELUProjection(nn.Module):
    """A linear layer followed by the exact (erf) GELU."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = ColumnParallelLinear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class GELUFeedForward(nn.Module):
    """in_dim -> in_dim -> exact GELU -> out_dim, the CLIP image embedder's MLP."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # Index-style names mirror Diffusers' keys (`net.0.proj`, `net.2`); index 1 is its dropout.
        self.net = nn.Sequential(GELUProjection(in_dim, in_dim), nn.Identity(), RowParallelLinear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageProjection(nn.Module):
    """LayerNorm -> MLP (exact GELU) -> LayerNorm: the CLIP image tokens to the model width (I2V / FLF2V)."""

    def __init__(self, in_dim: int, dim: int, pos_embed_seq_len: int | None):
        super().__init__()
        self.norm1 = FP32LayerNorm(in_dim, eps=IMAGE_EMBEDDER_NORM_EPS)
        self.ff = GELUFeedForward(in_dim, dim)
        self.norm2 = FP32LayerNorm(dim, eps=IMAGE_EMBEDDER_NORM_EPS)
        # FLF2V: the first and last frames' tokens side by side, told apart by a learned position table.
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_seq_len, in_dim)) if pos_embed_seq_len else None

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds: CLIP penultimate hidden states (B, 257, image_dim), or (2 B, 257, image_dim) for FLF2V."""
        if self.pos_embed is not None:
            image_embeds = image_embeds.reshape(-1, 2 * image_embeds.shape[1], image_embeds.shape[2])
            image_embeds = image_embeds + self.pos_embed
        x = self.norm1(image_embeds)
        x = self.ff(x)
        return self.norm2(x)  # (B, N_img, D)


class ConditionEmbedder(nn.Module):
    """Timestep -> (temb, the blocks' shared modulation projection); text and image tokens -> model width."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int, image_dim: int | None, pos_embed_seq_len: int | None):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = MLPEmbedder(freq_dim, dim)
        # One projection to the 6 modulation vectors of every block; each block adds its own learned table.
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(text_dim, dim)
        self.image_embedder = ImageProjection(image_dim, dim, pos_embed_seq_len) if image_dim is not None else None

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep (B, S), S = 1 or one per token; returns temb (B, S, D) and the projection (B, S, 6, D)."""
        batch, steps = timestep.shape
        sinusoid = timestep_embedding(timestep.flatten(), self.freq_dim).unflatten(0, (batch, steps))  # (B, S, f)
        # The time embedder stays in float32 in Diffusers (`_keep_in_fp32_modules`): cast to its weights' dtype.
        temb = self.time_embedder(sinusoid.to(self.time_embedder.linear_1.weight.dtype)).to(dtype)  # (B, S, D)
        return temb, self.time_proj(F.silu(temb)).unflatten(2, (6, -1))


#################################################################################
#                                 Wan blocks                                    #
#################################################################################


class WanAttention(nn.Module):
    """Multi-head attention with RMS qk-norm across all heads (not per head); for I2V cross-attention, a second
    key/value set over the image tokens whose attention output is added to the text one."""

    def __init__(self, dim: int, num_heads: int, eps: float, added_kv_proj_dim: int | None = None):
        super().__init__()
        self.head_dim = dim // num_heads
        # Registration order follows Diffusers' so state-dict keys come out in the same order.
        self.to_q = ColumnParallelLinear(dim, dim)
        self.to_k = ColumnParallelLinear(dim, dim)
        self.to_v = ColumnParallelLinear(dim, dim)
        # A list so the key is `to_out.0`, as in Diffusers' checkpoints (its index 1 is a no-op dropout).
        self.to_out = nn.ModuleList([RowParallelLinear(dim, dim)])
        # Normalized over the full width, all heads at once: under tensor parallelism each rank holds some of the
        # heads, so the norms sum the squares over the TP group.
        self.norm_q = ParallelRMSNorm(dim, eps=eps)
        self.norm_k = ParallelRMSNorm(dim, eps=eps)
        if added_kv_proj_dim is not None:
            self.add_k_proj = ColumnParallelLinear(added_kv_proj_dim, dim)
            self.add_v_proj = ColumnParallelLinear(added_kv_proj_dim, dim)
            self.norm_added_k = ParallelRMSNorm(dim, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        freqs_cis: FreqsCis | None = None,
        image_context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        context_kv: ContextKV | None = None,
    ) -> torch.Tensor:
        """x: (B, L, D) queries; context: (B, T, D) keys/values (None: self-attention over x); freqs_cis: rotary
        (cos, sin) of x's positions, self-attention only; image_context: (B, N_img, D), I2V cross-attention only;
        attn_mask: (B, L) key mask of self-attention, or None; only sequence parallelism's padding sets it.
        kv_cache: self-attention's keys of earlier frames (causal Wan); context_kv: cross-attention's keys of the
        request's prompt, computed by its first forward (causal Wan)."""
        split = (-1, self.head_dim)
        query = self.norm_q(self.to_q(x)).unflatten(-1, split)  # (B, L, H, hd)
        if context is not None and context_kv is not None:
            key, value = context_kv.get(lambda: self._key_value(context))
        else:
            key, value = self._key_value(x if context is None else context)  # (B, T, H, hd)
        if freqs_cis is not None:
            query, key = apply_qk_norm_rope(query, key, None, None, *freqs_cis)  # normed above, across heads

        if context is None:
            out = attention(query, key, value, attn_mask, kv_cache)  # the keys are every SP rank's video tokens
        else:
            out = cross_attention(query, key, value)  # the text is whole on every rank
        out = out.flatten(2).type_as(query)  # (B, L, D)
        if image_context is not None:
            # Diffusers computes the image attention first and adds it to the text one; the sum is the same.
            image_key = self.norm_added_k(self.add_k_proj(image_context)).unflatten(-1, split)
            image_value = self.add_v_proj(image_context).unflatten(-1, split)
            out = out + cross_attention(query, image_key, image_value).flatten(2).type_as(query)
        return self.to_out[0](out)

    def _key_value(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed keys and values of source (B, T, D), each (B, T, H, hd)."""
        split = (-1, self.head_dim)
        return self.norm_k(self.to_k(source)).unflatten(-1, split), self.to_v(source).unflatten(-1, split)


class WanFeedForward(nn.Module):
    """The block MLP: dim -> ffn_dim -> tanh-GELU -> dim (ffn_dim is not a round multiple of dim in Wan)."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        # Index-style names mirror Diffusers' checkpoint keys (`net.0.proj`, `net.2`); index 1 is its dropout.
        self.net = nn.Sequential(TanhGELUProjection(dim, ffn_dim), nn.Identity(), RowParallelLinear(ffn_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WanTransformerBlock(nn.Module):
    """Modulated self-attention, unmodulated cross-attention (text, + image for I2V), modulated MLP."""

    def __init__(
        self, dim: int, ffn_dim: int, num_heads: int, cross_attn_norm: bool, eps: float, added_kv_proj_dim: int | None
    ):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, num_heads, eps)
        self.attn2 = WanAttention(dim, num_heads, eps, added_kv_proj_dim=added_kv_proj_dim)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = WanFeedForward(dim, ffn_dim)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        # Learned per block, added to the shared timestep projection: (shift, scale, gate) x (attention, MLP).
        self.scale_shift_table = nn.Parameter(torch.empty(1, 6, dim))

    def modulation(self, timestep_proj: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) of the self-attention, then of the MLP, for timestep_proj (B, S, 6, D)."""
        # In float32, as Diffusers keeps the table (each vector (B, S, D), broadcast over tokens when S = 1).
        return (self.scale_shift_table[None] + timestep_proj.float()).unbind(2)

    def modulated_input(self, x: torch.Tensor, shift_msa: torch.Tensor, scale_msa: torch.Tensor) -> torch.Tensor:
        """The self-attention's input: x (B, L, D) normed, then scaled and shifted by `modulation`'s first two."""
        return fp32_modulate(self.norm1, x, shift_msa, scale_msa)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        image_context: torch.Tensor | None,
        timestep_proj: torch.Tensor,
        freqs_cis: FreqsCis,
        attn_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        context_kv: ContextKV | None = None,
    ) -> torch.Tensor:
        """x: video tokens (B, L, D); context: text tokens (B, T, D); timestep_proj: (B, S, 6, D), S = 1 or L;
        attn_mask: (B, L) self-attention key mask, or None; kv_cache, context_kv: as in `WanAttention`."""
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = self.modulation(timestep_proj)

        attn_in = self.modulated_input(x, shift_msa, scale_msa)
        attn_out = self.attn1(attn_in, freqs_cis=freqs_cis, attn_mask=attn_mask, kv_cache=kv_cache)
        x = gated_residual(x, gate_msa, attn_out)

        x_norm = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(x_norm, context=context, image_context=image_context, context_kv=context_kv)

        ff_out = self.ffn(fp32_modulate(self.norm3, x, c_shift, c_scale))
        return gated_residual(x, c_gate, ff_out)


#################################################################################
#                                   Wan model                                   #
#################################################################################


@dataclasses.dataclass
class WanStack(BlockStack):
    """Wan's state between blocks: streams = [video tokens (B, L / N, D)]."""

    context: torch.Tensor  # text tokens (B, T, D), whole on every rank
    image_context: torch.Tensor | None  # I2V's CLIP image tokens (B, N_img, D), whole on every rank
    timestep_proj: torch.Tensor  # the blocks' shared modulation projection (B, S, 6, D), S = 1 or L / N
    temb: torch.Tensor  # (B, S, D), for the output adaLN
    freqs_cis: FreqsCis  # each (L / N, head_dim): this rank's video positions
    attn_mask: torch.Tensor | None  # only sequence parallelism's padding sets it
    batch: int
    grid: tuple[int, int, int]  # latent patches along (frames, rows, columns)


class WanTransformer3DModel(BlockStackDiT):
    """The Wan transformer: video latents, text (and image) embeddings and timestep -> flow velocity."""

    block_lists = ("blocks",)

    def __init__(self, config: WanDitConfig):
        super().__init__()
        self.config = config
        dim = config.num_attention_heads * config.attention_head_dim
        out_channels = config.out_channels or config.in_channels
        if (config.image_dim is None) != (config.added_kv_proj_dim is None):
            raise ValueError("image_dim and added_kv_proj_dim come together (I2V checkpoints set both)")

        # Parameter-free: the pipeline calls it once per request and passes (cos, sin) to every step.
        self.rotary_emb = WanRotaryEmbedding(config.attention_head_dim, config.patch_size)
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.condition_embedder = ConditionEmbedder(
            dim, config.freq_dim, config.text_dim, config.image_dim, config.pos_embed_seq_len
        )
        self.blocks = nn.ModuleList(
            [
                WanTransformerBlock(
                    dim,
                    config.ffn_dim,
                    config.num_attention_heads,
                    config.cross_attn_norm,
                    config.eps,
                    config.added_kv_proj_dim,
                )  # fmt: skip
                for _ in range(config.num_layers)
            ]
        )
        self.norm_out = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.empty(1, 2, dim))

    @property
    def cache_family(self) -> str:
        """TeaCache's fits are per model size: Wan2.1's 1.3B (width 1536) and 14B (width 5120)."""
        width = self.config.num_attention_heads * self.config.attention_head_dim
        return {1536: "wan-1.3b", 5120: "wan-14b"}.get(width, "wan")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        freqs_cis: FreqsCis,
        encoder_hidden_states_image: torch.Tensor | None = None,
    ) -> WanStack:
        """
        hidden_states: latents (B, in_channels, F, H, W) (for I2V the noisy latents, mask and image latents
        concatenated on channels); timestep: the scheduler's timestep in [0, 1000], (B,), or (B, L) with one per
        token (Wan2.2-TI2V, L = F * H * W / 4); encoder_hidden_states: UMT5 embeddings (B, T, text_dim);
        freqs_cis: `self.rotary_emb(F, H, W)`, each (L, head_dim); encoder_hidden_states_image: CLIP image
        tokens (B, 257, image_dim), required by I2V checkpoints (image_dim set) and ignored by others.
        The model's output is the predicted velocity (B, out_channels, F, H, W).
        """
        if self.config.image_dim is not None and encoder_hidden_states_image is None:
            raise ValueError("this Wan checkpoint is image-conditioned and needs encoder_hidden_states_image")
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)

        x = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # (B, L, D)

        # Sequence parallelism: the video tokens, self-attention's one stream, are split across the SP group (padded
        # where they do not divide), with their rotary table. The text (and I2V's image) tokens are only keys and
        # values of cross-attention: they stay whole on every rank, replicated rather than split, since they are
        # short and each rank's queries then see every key with no communication. At SP size 1 nothing moves.
        video = SequenceShard.of(x.shape[1])
        x = video.split(x)  # (B, L / N, D)
        freqs_cis = tuple(video.split(table, dim=0) for table in freqs_cis)  # each (L / N, head_dim)
        attn_mask = streams_key_mask((video,), batch, x.device)  # None unless the video is padded

        # One timestep per sample broadcasts over the tokens as a length-1 token axis; one per token follows its
        # token to its rank.
        timestep = timestep[:, None] if timestep.ndim == 1 else video.split(timestep)  # (B, 1 or L / N)
        temb, timestep_proj = self.condition_embedder(timestep, encoder_hidden_states.dtype)  # (B,S,D), (B,S,6,D)
        context = self.condition_embedder.text_embedder(encoder_hidden_states)  # (B, T, D)
        image_context = None
        if self.condition_embedder.image_embedder is not None:
            image_context = self.condition_embedder.image_embedder(encoder_hidden_states_image)  # (B, N_img, D)

        return WanStack([x], video, context, image_context, timestep_proj, temb, freqs_cis, attn_mask, batch, grid)

    def run_blocks(self, stack: WanStack, start: int, end: int) -> None:
        (x,) = stack.streams
        for block in self.blocks[start:end]:
            x = block(x, stack.context, stack.image_context, stack.timestep_proj, stack.freqs_cis, stack.attn_mask)
        stack.streams = [x]

    def finish(self, stack: WanStack) -> torch.Tensor:
        p_t, p_h, p_w = self.config.patch_size
        # The output adaLN: (shift, scale), from temb itself rather than the block projection.
        shift, scale = (self.scale_shift_table[None] + stack.temb[:, :, None]).unbind(2)  # each (B, S, D)
        x = fp32_modulate(self.norm_out, stack.streams[0], shift, scale)
        x = self.proj_out(x)  # (B, L / N, p_t * p_h * p_w * C)
        x = stack.shard.gather(x)  # the whole video from every rank's part, once, at the narrowest width: (B, L, ...)

        # Unpatchify: (B, F', H', W', p_t, p_h, p_w, C) -> (B, C, F' p_t, H' p_h, W' p_w).
        x = x.reshape(stack.batch, *stack.grid, p_t, p_h, p_w, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def modulated_input(self, stack: WanStack) -> torch.Tensor:
        block = self.blocks[0]
        shift_msa, scale_msa = block.modulation(stack.timestep_proj)[:2]
        return block.modulated_input(stack.streams[0], shift_msa, scale_msa)


EntryClass = WanTransformer3DModel
