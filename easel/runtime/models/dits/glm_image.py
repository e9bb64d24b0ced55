"""GLM-Image's diffusion decoder, written against Easel's layer library.

The DiT turns an autoregressive prior into pixels: each image token adds the embedding of its prior token (the
vision-language model's generated image code, upsampled to the latent grid) to its patch embedding, and the text
stream is the glyph encoder's embedding of the prompt's quoted text. Blocks attend jointly over text then image
tokens (the image tokens rotated, half-split, by their row and column), with adaLN-Zero modulation of both
streams from one conditioning vector (timestep, target size and crop, SDXL-style) and one MLP shared by both.
Image-to-image caches the keys and values of the condition images' tokens in each block
(`easel.runtime.layers.KVCache`): written once per request, attended to by the conditional passes.
Module names mirror Diffusers' `GlmImageTransformer2DModel`, so its checkpoints load strictly.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from easel.configs.models.dits.glm_image import GlmImageDitConfig
from easel.runtime.distributed import SequenceShard, streams_key_mask
from easel.runtime.layers import (
    ColumnParallelLinear,
    KVCache,
    RowParallelLinear,
    attention,
    gated_residual,
    modulate,
    timestep_embedding,
)
from easel.runtime.layers.rotary import rotate_half_qk
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT

FreqsCis = tuple[torch.Tensor, torch.Tensor]
ROPE_THETA = 10000.0
NORM_EPS = 1e-5


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension without affine weights, in x's dtype."""
    return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)


#################################################################################
#                 Conditioning: timestep, size, prior, glyphs                   #
#################################################################################


class GlmImageRotaryEmbedding(nn.Module):
    """(cos, sin), each (h w, head_dim), of a latent grid's patches: half the angles by row, half by column."""

    def __init__(self, head_dim: int, patch_size: int):
        super().__init__()
        self.head_dim, self.patch_size = head_dim, patch_size

    def forward(self, height: int, width: int) -> FreqsCis:
        """height, width: the latents' (before patching)."""
        rows, cols = height // self.patch_size, width // self.patch_size
        axis_dim = self.head_dim // 2
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, axis_dim, 2, dtype=torch.float32)[: axis_dim // 2] / axis_dim))
        freqs_h = torch.outer(torch.arange(rows), inv_freq)[:, None].expand(rows, cols, -1)
        freqs_w = torch.outer(torch.arange(cols), inv_freq)[None, :].expand(rows, cols, -1)
        freqs = torch.cat([freqs_h, freqs_w], dim=-1)
        freqs = torch.cat([freqs, freqs], dim=-1).reshape(rows * cols, -1)  # each angle in both halves
        return freqs.cos(), freqs.sin()


class MLP(nn.Module):
    """linear_1 -> activation -> linear_2 (Diffusers' TimestepEmbedding and PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepSizeEmbedding(nn.Module):
    """The conditioning vector: SiLU(MLP(sinusoid(t)) + MLP(sinusoids of the crop corner and the target size))."""

    def __init__(self, time_embed_dim: int, condition_dim: int):
        super().__init__()
        self.time_embed_dim, self.condition_dim = time_embed_dim, condition_dim
        self.timestep_embedder = MLP(time_embed_dim, time_embed_dim)
        self.condition_embedder = MLP(4 * condition_dim, time_embed_dim)

    def forward(
        self, timestep: torch.Tensor, target_size: torch.Tensor, crop_coords: torch.Tensor, dtype
    ) -> torch.Tensor:
        """timestep (B,); target_size, crop_coords (B, 2) in pixels."""
        sizes = [
            timestep_embedding(v.flatten(), self.condition_dim).view(len(v), -1) for v in (crop_coords, target_size)
        ]
        condition = self.condition_embedder(torch.cat(sizes, dim=1).to(dtype))
        time = self.timestep_embedder(timestep_embedding(timestep, self.time_embed_dim).to(dtype))
        return F.silu(time + condition)  # (B, time_embed_dim)


class FeedForward(nn.Module):
    """dim -> hidden -> activation -> dim, under Diffusers' FeedForward names (`net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, hidden_dim: int, activation, out_dim: int | None = None):
        super().__init__()
        self.activation = activation
        self.net = nn.ModuleList(
            [_Projection(dim, hidden_dim), nn.Identity(), RowParallelLinear(hidden_dim, out_dim or dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.activation(self.net[0].proj(x)))


class _Projection(nn.Module):
    """The first linear of a FeedForward, named `proj` as in Diffusers' activation modules."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.proj = ColumnParallelLinear(dim, hidden_dim)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


#################################################################################
#                                GLM-Image block                                #
#################################################################################


class AdaLNZero(nn.Module):
    """The block's 12 modulation vectors, (shift, scale, gate) x (attention, MLP) x (image, text), interleaved by
    stream as Diffusers lays them out."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 12 * dim)

    def forward(self, cond: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        chunks = self.linear(cond).chunk(12, dim=1)  # each (B, D): image and text alternate
        return list(chunks[0::2]), list(chunks[1::2])  # (shift, scale, gate, mlp shift, mlp scale, mlp gate) each


class JointAttention(nn.Module):
    """Attention over text then image tokens; LayerNorm qk-norm; the rotary embedding on the image tokens only."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.to_q = ColumnParallelLinear(dim, inner)
        self.to_k = ColumnParallelLinear(dim, inner)
        self.to_v = ColumnParallelLinear(dim, inner)
        self.to_out = nn.ModuleList([RowParallelLinear(inner, dim)])  # `to_out.0`, as in Diffusers' checkpoints

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: FreqsCis,
        text_len: int,
        attn_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: text then image tokens (B, T + L, D); freqs_cis: the L image tokens' rotary tables."""
        split = (-1, self.head_dim)
        query, key, value = (proj(x).unflatten(-1, split) for proj in (self.to_q, self.to_k, self.to_v))
        query, key = layer_norm(query), layer_norm(key)
        image_query, image_key = rotate_half_qk(query[:, text_len:], key[:, text_len:], *freqs_cis)
        query = torch.cat([query[:, :text_len], image_query], dim=1)
        key = torch.cat([key[:, :text_len], image_key], dim=1)
        out = attention(query, key, value, attn_mask, kv_cache).flatten(2)  # (B, T + L, inner)
        return self.to_out[0](out)


class GlmImageTransformerBlock(nn.Module):
    """adaLN-Zero block over both streams: one joint attention, then one MLP applied to each stream."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, cond_dim: int):
        super().__init__()
        self.norm1 = AdaLNZero(cond_dim, dim)
        self.attn1 = JointAttention(dim, num_heads, head_dim)
        self.ff = FeedForward(dim, 4 * dim, _gelu_tanh)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        cond: torch.Tensor,
        freqs_cis: FreqsCis,
        attn_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: image tokens (B, L, D); context: text tokens (B, T, D); cond: (B, cond_dim)."""
        image_mods, text_mods = self.norm1(cond)
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = image_mods
        c_shift, c_scale, c_gate, c_mlp_shift, c_mlp_scale, c_mlp_gate = text_mods
        text_len = context.shape[1]
        joint = torch.cat([modulate(layer_norm(context), c_shift, c_scale), modulate(layer_norm(x), shift, scale)], 1)
        attn_out = self.attn1(joint, freqs_cis, text_len, attn_mask, kv_cache)
        context = gated_residual(context, c_gate, attn_out[:, :text_len])
        x = gated_residual(x, gate, attn_out[:, text_len:])
        x = gated_residual(x, mlp_gate, self.ff(modulate(layer_norm(x), mlp_shift, mlp_scale)))
        context = gated_residual(context, c_mlp_gate, self.ff(modulate(layer_norm(context), c_mlp_shift, c_mlp_scale)))
        return x, context


#################################################################################
#                                GLM-Image model                                #
#################################################################################


@dataclasses.dataclass
class GlmImageStack(BlockStack):
    """GLM-Image's state between blocks: streams = [image (B, L / N, D), text (B, T / N, D)]."""

    cond: torch.Tensor  # (B, time_embed_dim)
    freqs_cis: FreqsCis  # this rank's image positions
    attn_mask: torch.Tensor | None  # only sequence parallelism's padding sets it
    kv_caches: list[KVCache] | None  # one per block: the condition images' keys, where image-to-image
    grid: tuple[int, int, int]  # (batch, patch rows, patch columns)


class GlmImageTransformer2DModel(BlockStackDiT):
    """The GLM-Image DiT: latents, prior tokens, glyph embeddings, timestep and size -> velocity."""

    cache_family = "glm-image"
    block_lists = ("transformer_blocks",)

    def __init__(self, config: GlmImageDitConfig):
        super().__init__()
        self.config = config
        heads, head_dim, p = config.num_attention_heads, config.attention_head_dim, config.patch_size
        dim = heads * head_dim
        out_channels = config.out_channels or config.in_channels
        # Parameter-free: the pipeline calls it once per request and passes (cos, sin) to every step.
        self.rotary_emb = GlmImageRotaryEmbedding(head_dim, p)
        self.image_projector = _PatchProjector(config.in_channels * p * p, dim)
        self.glyph_projector = FeedForward(config.text_embed_dim, dim, F.gelu, out_dim=dim)
        self.prior_token_embedding = nn.Embedding(config.prior_vq_quantizer_codebook_size, dim)
        self.prior_projector = FeedForward(dim, dim, F.silu)
        self.time_condition_embed = TimestepSizeEmbedding(config.time_embed_dim, config.condition_dim)
        self.transformer_blocks = nn.ModuleList(
            [GlmImageTransformerBlock(dim, heads, head_dim, config.time_embed_dim) for _ in range(config.num_layers)]
        )
        self.norm_out = _OutputNorm(config.time_embed_dim, dim)
        self.proj_out = nn.Linear(dim, p * p * out_channels)

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks)

    def new_kv_cache(self) -> list[KVCache]:
        """Empty per-block caches for a request's condition images."""
        return [KVCache() for _ in range(self.num_blocks)]

    def embed(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        prior_token_id: torch.Tensor,
        prior_token_drop: torch.Tensor,
        timestep: torch.Tensor,
        target_size: torch.Tensor,
        crop_coords: torch.Tensor,
        freqs_cis: FreqsCis,
        kv_caches: list[KVCache] | None = None,
    ) -> GlmImageStack:
        """
        hidden_states: latents (B, C, H, W); encoder_hidden_states: glyph embeddings (B, T, text_embed_dim), T may
        be 0; prior_token_id: (B, L) prior codes, one per patch; prior_token_drop: (B, L) bool, True where the prior
        is left out (the unconditional pass); timestep: (B,) in [0, 1000]; target_size, crop_coords: (B, 2) pixels;
        freqs_cis: `self.rotary_emb(H, W)`; kv_caches: the request's condition-image caches, with their mode set.
        The model's output is the predicted velocity (B, C, H, W).
        """
        batch, _, height, width = hidden_states.shape
        p = self.config.patch_size
        x = self.image_projector(hidden_states, p)  # (B, L, D)
        context = self.glyph_projector(encoder_hidden_states)  # (B, T, D)
        prior = self.prior_token_embedding(prior_token_id) * (~prior_token_drop)[..., None]  # dropped priors: zeros
        x = x + self.prior_projector(prior)
        cond = self.time_condition_embed(timestep, target_size, crop_coords, x.dtype)

        shards = (SequenceShard.of(context.shape[1]), SequenceShard.of(x.shape[1]))  # text first, as in attention
        context, x = shards[0].split(context), shards[1].split(x)
        freqs_cis = tuple(shards[1].split(table, dim=0) for table in freqs_cis)
        attn_mask = streams_key_mask(shards, batch, x.device)
        return GlmImageStack(
            [x, context], shards[1], cond, freqs_cis, attn_mask, kv_caches, (batch, height // p, width // p)
        )

    def run_blocks(self, stack: GlmImageStack, start: int, end: int) -> None:
        x, context = stack.streams
        for index in range(start, end):
            cache = None if stack.kv_caches is None else stack.kv_caches[index]
            x, context = self.transformer_blocks[index](x, context, stack.cond, stack.freqs_cis, stack.attn_mask, cache)
        stack.streams = [x, context]

    def finish(self, stack: GlmImageStack) -> torch.Tensor:
        p = self.config.patch_size
        out = self.proj_out(self.norm_out(stack.streams[0], stack.cond))  # (B, L / N, p p C)
        out = stack.shard.gather(out)
        batch, rows, cols = stack.grid
        out = out.reshape(batch, rows, cols, -1, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, rows, p, cols, p)
        return out.flatten(4, 5).flatten(2, 3)

    def modulated_input(self, stack: GlmImageStack) -> torch.Tensor:
        image_mods, _ = self.transformer_blocks[0].norm1(stack.cond)
        return modulate(layer_norm(stack.streams[0]), image_mods[0], image_mods[1])


class _PatchProjector(nn.Module):
    """Latents (B, C, H, W) cut into p x p patches, each (C p p, channels then rows then columns) projected."""

    def __init__(self, patch_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(patch_dim, dim)

    def forward(self, latents: torch.Tensor, p: int) -> torch.Tensor:
        b, c, h, w = latents.shape
        patches = latents.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).flatten(3, 5).flatten(1, 2)
        return self.proj(patches)  # (B, h w / p^2, D)


class _OutputNorm(nn.Module):
    """The output adaLN: LayerNorm modulated by a linear map of the conditioning (no activation before it)."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(cond.to(x.dtype)).chunk(2, dim=1)
        return modulate(layer_norm(x), shift, scale)


EntryClass = GlmImageTransformer2DModel
