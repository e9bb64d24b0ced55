"""HunyuanVideo-1.5, Tencent's video MMDiT, written against Easel's layer library.

Every block is double-stream (separate weights for video and text, one joint attention over video then text).
The text stream joins three conditions, each marked by a learned type embedding: the Qwen2.5-VL prompt after a
small token refiner (self-attention blocks gated by the timestep and the prompt's mean), the ByT5 glyphs of its
quoted text, and, for image-to-video, SigLIP's tokens of the first frame. Per sample, the real tokens of the three
go first (image, glyphs, prompt) and the padding after them, zeroed and masked out of every attention. The video
is rotated by (frame, row, column); the text is not rotated. Module names mirror Diffusers'
`HunyuanVideo15Transformer3DModel`, so its checkpoints load strictly.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from easel.configs.models.dits.hunyuanvideo15 import HunyuanVideo15DitConfig
from easel.runtime.distributed import SequenceShard, streams_key_mask
from easel.runtime.layers import (
    AdaLNContinuous,
    ColumnParallelLinear,
    RowParallelLinear,
    attention,
    cross_attention,
    gated_residual,
    gelu_tanh,
    modulate,
    multi_axis_rope_frequencies,
    timestep_embedding,
)
from easel.runtime.layers.layernorm import RMSNormCastBeforeWeight, apply_qk_norm, apply_qk_norm_rope
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT
from easel.runtime.models.dits.flux import AdaLNZero

FreqsCis = tuple[torch.Tensor, torch.Tensor]
TIMESTEP_SINUSOID_DIM = 256
GLYPH_HIDDEN_DIM = 2048  # the ByT5 projection's inner width, fixed by the checkpoints
PROMPT, GLYPHS, IMAGE = 0, 1, 2  # the text stream's condition types


#################################################################################
#                          Conditioning: the text stream                        #
#################################################################################


class MLP(nn.Module):
    """linear_1 -> SiLU -> linear_2 (Diffusers' TimestepEmbedding and PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEmbedding(nn.Module):
    """MLP(sinusoid(t)), the blocks' conditioning vector (B, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = MLP(TIMESTEP_SINUSOID_DIM, dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_embedding(timestep, TIMESTEP_SINUSOID_DIM).to(dtype))


class TimestepTextEmbedding(TimestepEmbedding):
    """The refiner's conditioning: MLP(sinusoid(t)) + MLP(the prompt's mean token)."""

    def __init__(self, dim: int, pooled_dim: int):
        super().__init__(dim)
        self.text_embedder = MLP(pooled_dim, dim)

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return super().forward(timestep, pooled.dtype) + self.text_embedder(pooled)


class FeedForward(nn.Module):
    """dim -> hidden -> activation -> dim, under Diffusers' FeedForward names (`net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, hidden_dim: int, activation, parallel: bool = True):
        super().__init__()
        self.activation = activation
        column, row = (ColumnParallelLinear, RowParallelLinear) if parallel else (nn.Linear, nn.Linear)
        self.net = nn.ModuleList([_Projection(column(dim, hidden_dim)), nn.Identity(), row(hidden_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.activation(self.net[0].proj(x)))


class _Projection(nn.Module):
    """The first linear of a FeedForward, named `proj` as in Diffusers' activation modules."""

    def __init__(self, proj: nn.Linear):
        super().__init__()
        self.proj = proj


class SelfAttention(nn.Module):
    """The refiner's plain self-attention over the prompt's tokens (whole on every rank), real keys only."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, num_heads * head_dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(num_heads * head_dim, dim)])

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        query, key, value = (proj(x).unflatten(-1, (-1, self.head_dim)) for proj in (self.to_q, self.to_k, self.to_v))
        return self.to_out[0](cross_attention(query, key, value, key_mask).flatten(2))


class RefinerBlock(nn.Module):
    """Pre-norm self-attention and SiLU MLP over the prompt, each gated by the conditioning."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ff = FeedForward(dim, int(dim * mlp_ratio), F.silu, parallel=False)
        self.norm_out = nn.Module()
        self.norm_out.linear = nn.Linear(dim, 2 * dim)  # the two gates, `norm_out.linear` in Diffusers' keys

    def forward(self, x: torch.Tensor, cond: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        gate_attn, gate_mlp = self.norm_out.linear(F.silu(cond)).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, D) each
        x = x + self.attn(self.norm1(x), key_mask) * gate_attn
        return x + self.ff(self.norm2(x)) * gate_mlp


class TokenRefiner(nn.Module):
    """The prompt's Qwen2.5-VL states, projected and refined by a few self-attention blocks."""

    def __init__(self, in_dim: int, num_heads: int, head_dim: int, num_layers: int, mlp_ratio: float = 4.0):
        super().__init__()
        dim = num_heads * head_dim
        self.time_text_embed = TimestepTextEmbedding(dim, in_dim)
        self.proj_in = nn.Linear(in_dim, dim)
        self.token_refiner = nn.Module()
        self.token_refiner.refiner_blocks = nn.ModuleList(
            [RefinerBlock(dim, num_heads, head_dim, mlp_ratio) for _ in range(num_layers)]
        )

    def forward(self, states: torch.Tensor, timestep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, T, in_dim), mask (B, T) of the real tokens -> (B, T, D)."""
        weights = mask.float().unsqueeze(-1)
        pooled = ((states * weights).sum(dim=1) / weights.sum(dim=1)).to(states.dtype)  # the real tokens' mean
        cond = self.time_text_embed(timestep, pooled)
        x = self.proj_in(states)
        for block in self.token_refiner.refiner_blocks:
            x = block(x, cond, mask.bool())
        return x


class GlyphProjection(nn.Module):
    """ByT5 states to the model's width: LayerNorm, then three linears with GELU between."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.linear_1 = nn.Linear(in_dim, GLYPH_HIDDEN_DIM)
        self.linear_2 = nn.Linear(GLYPH_HIDDEN_DIM, GLYPH_HIDDEN_DIM)
        self.linear_3 = nn.Linear(GLYPH_HIDDEN_DIM, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_3(F.gelu(self.linear_2(F.gelu(self.linear_1(self.norm(x))))))


class ImageProjection(nn.Module):
    """SigLIP tokens of the first frame to the model's width."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim)
        self.linear_1 = nn.Linear(in_dim, in_dim)
        self.linear_2 = nn.Linear(in_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.linear_2(F.gelu(self.linear_1(self.norm_in(x)))))


#################################################################################
#                               The video blocks                                #
#################################################################################


class JointAttention(nn.Module):
    """Attention over video then text tokens, each stream with its own projections and RMS qk-norm; the video
    rotated by its positions."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.to_q, self.to_k, self.to_v = (ColumnParallelLinear(dim, inner) for _ in range(3))
        self.norm_q, self.norm_k = RMSNormCastBeforeWeight(head_dim), RMSNormCastBeforeWeight(head_dim)
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (ColumnParallelLinear(dim, inner) for _ in range(3))
        self.norm_added_q, self.norm_added_k = RMSNormCastBeforeWeight(head_dim), RMSNormCastBeforeWeight(head_dim)
        self.to_out = nn.ModuleList([RowParallelLinear(inner, dim)])  # `to_out.0`, as in Diffusers' checkpoints
        self.to_add_out = RowParallelLinear(inner, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, freqs_cis: FreqsCis, attn_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: video (B, L, D); context: text (B, T, D); attn_mask: (B, L + T) key mask."""
        split = (-1, self.head_dim)
        query, key, value = (proj(x).unflatten(-1, split) for proj in (self.to_q, self.to_k, self.to_v))
        query, key = apply_qk_norm_rope(query, key, self.norm_q, self.norm_k, *freqs_cis)
        text = [proj(context).unflatten(-1, split) for proj in (self.add_q_proj, self.add_k_proj, self.add_v_proj)]
        text[0], text[1] = apply_qk_norm(text[0], text[1], self.norm_added_q, self.norm_added_k)
        query, key, value = (
            torch.cat([video, words], dim=1) for video, words in zip((query, key, value), text, strict=True)
        )
        out = attention(query, key, value, attn_mask).flatten(2)  # (B, L + T, inner)
        video_out, text_out = out.split([x.shape[1], context.shape[1]], dim=1)
        return self.to_out[0](video_out.contiguous()), self.to_add_out(text_out.contiguous())


class HunyuanVideo15Block(nn.Module):
    """MMDiT block: video and text streams with their own weights, mixed only by the joint attention."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = AdaLNZero(dim, num_vectors=6)
        self.norm1_context = AdaLNZero(dim, num_vectors=6)
        self.attn = JointAttention(dim, num_heads, head_dim)
        self.ff = FeedForward(dim, int(dim * mlp_ratio), gelu_tanh)
        self.ff_context = FeedForward(dim, int(dim * mlp_ratio), gelu_tanh)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, cond: torch.Tensor, freqs_cis: FreqsCis, attn_mask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_norm, (gate, mlp_shift, mlp_scale, mlp_gate) = self.norm1(x, cond)
        c_norm, (c_gate, c_mlp_shift, c_mlp_scale, c_mlp_gate) = self.norm1_context(context, cond)
        attn_out, context_attn_out = self.attn(x_norm, c_norm, freqs_cis, attn_mask)
        x = gated_residual(x, gate, attn_out)
        context = gated_residual(context, c_gate, context_attn_out)
        x = gated_residual(x, mlp_gate, self.ff(modulate(_layer_norm(x), mlp_shift, mlp_scale)))
        context_mlp = self.ff_context(modulate(_layer_norm(context), c_mlp_shift, c_mlp_scale))
        return x, gated_residual(context, c_mlp_gate, context_mlp)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


#################################################################################
#                             HunyuanVideo-1.5 model                            #
#################################################################################


class HunyuanVideo15RotaryEmbedding(nn.Module):
    """(cos, sin), each (F H W, head_dim), of the patches of a latent video: bands for frame, row and column."""

    def __init__(self, axes_dims: tuple[int, ...], patch_size: int, patch_size_t: int, theta: float):
        super().__init__()
        self.axes_dims, self.patch_size, self.patch_size_t, self.theta = (
            tuple(axes_dims),
            patch_size,
            patch_size_t,
            theta,
        )

    def forward(self, frames: int, height: int, width: int) -> FreqsCis:
        sizes = (frames // self.patch_size_t, height // self.patch_size, width // self.patch_size)
        grid = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in sizes), indexing="ij")
        return multi_axis_rope_frequencies(torch.stack([g.flatten() for g in grid], dim=1), self.axes_dims, self.theta)


@dataclasses.dataclass
class HunyuanVideo15Stack(BlockStack):
    """The state between blocks: streams = [video (B, L / N, D), text (B, T / N, D)]."""

    cond: torch.Tensor  # (B, D)
    freqs_cis: FreqsCis  # this rank's video positions
    attn_mask: torch.Tensor | None  # (B, L / N + T / N) key mask: the text's real tokens, and padding
    grid: tuple[int, int, int, int]  # (batch, patch frames, rows, columns)


class HunyuanVideo15Transformer3DModel(BlockStackDiT):
    """The HunyuanVideo-1.5 transformer: latents (with the first frame's), three text conditions, timestep ->
    velocity."""

    cache_family = "hunyuanvideo15"
    block_lists = ("transformer_blocks",)

    def __init__(self, config: HunyuanVideo15DitConfig):
        super().__init__()
        if config.use_meanflow:
            raise ValueError("HunyuanVideo-1.5's MeanFlow (super-resolution) checkpoints are not supported")
        self.config = config
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        dim = heads * head_dim
        p, p_t = config.patch_size, config.patch_size_t
        out_channels = config.out_channels or config.in_channels
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv3d(config.in_channels, dim, kernel_size=(p_t, p, p), stride=(p_t, p, p))
        self.image_embedder = ImageProjection(config.image_embed_dim, dim)
        self.context_embedder = TokenRefiner(config.text_embed_dim, heads, head_dim, config.num_refiner_layers)
        self.context_embedder_2 = GlyphProjection(config.text_embed_2_dim, dim)
        self.time_embed = TimestepEmbedding(dim)
        self.cond_type_embed = nn.Embedding(3, dim)
        # Parameter-free: the pipeline calls it once per request and passes (cos, sin) to every step.
        self.rotary_emb = HunyuanVideo15RotaryEmbedding(config.rope_axes_dim, p, p_t, config.rope_theta)
        self.transformer_blocks = nn.ModuleList(
            [HunyuanVideo15Block(dim, heads, head_dim, config.mlp_ratio) for _ in range(config.num_layers)]
        )
        self.norm_out = AdaLNContinuous(dim)
        self.proj_out = nn.Linear(dim, p_t * p * p * out_channels)

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks)

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        encoder_hidden_states_2: torch.Tensor,
        encoder_attention_mask_2: torch.Tensor,
        image_embeds: torch.Tensor | None,
        freqs_cis: FreqsCis,
    ) -> HunyuanVideo15Stack:
        """
        hidden_states: latents (B, in_channels, F, H, W); timestep: (B,) in [0, 1000]; encoder_hidden_states and
        encoder_attention_mask: the prompt's Qwen2.5-VL states (B, T1, text_embed_dim) and real tokens (B, T1);
        encoder_hidden_states_2 / _mask_2: the ByT5 glyphs (B, T2, text_embed_2_dim), (B, T2); image_embeds: SigLIP
        tokens of the first frame (B, T3, image_embed_dim), or None for text-to-video (all zeros, as Diffusers' pipeline
        passes them, mean the same: masked out); freqs_cis:
        `self.rotary_emb(F, H, W)`. The model's output is the predicted velocity (B, out_channels, F, H, W).
        """
        batch, _, frames, height, width = hidden_states.shape
        p, p_t = self.config.patch_size, self.config.patch_size_t
        grid = (batch, frames // p_t, height // p, width // p)
        cond = self.time_embed(timestep, timestep.dtype)
        x = self.x_embedder.proj(hidden_states).flatten(2).transpose(1, 2)  # (B, L, D)

        types = self.cond_type_embed.weight  # (3, D)
        prompt = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask) + types[PROMPT]
        glyphs = self.context_embedder_2(encoder_hidden_states_2) + types[GLYPHS]
        streams, masks = [glyphs, prompt], [encoder_attention_mask_2.bool(), encoder_attention_mask.bool()]
        # Text-to-video has no image tokens. Given as zeros they are only masked keys: the same result, at the cost
        # of a host sync to tell (None, as Easel's pipeline passes, needs none).
        if image_embeds is not None and not bool(torch.all(image_embeds == 0)):
            image = self.image_embedder(image_embeds) + types[IMAGE]
            streams.insert(0, image)
            masks.insert(0, torch.ones(image.shape[:2], dtype=torch.bool, device=image.device))
        context, context_mask = _real_tokens_first(streams, masks, text_start=len(streams) - 2)

        # Sequence parallelism as in FLUX: both streams split across the SP group, each on its own.
        shards = (SequenceShard.of(x.shape[1]), SequenceShard.of(context.shape[1]))  # video first, as in attention
        x, context = shards[0].split(x), shards[1].split(context)
        freqs_cis = tuple(shards[0].split(table, dim=0) for table in freqs_cis)
        video_keys = torch.ones(batch, shards[0].length, dtype=torch.bool, device=x.device)
        attn_mask = streams_key_mask(shards, batch, x.device, torch.cat([video_keys, context_mask], dim=1))
        return HunyuanVideo15Stack([x, context], shards[0], cond, freqs_cis, attn_mask, grid)

    def run_blocks(self, stack: HunyuanVideo15Stack, start: int, end: int) -> None:
        x, context = stack.streams
        for block in self.transformer_blocks[start:end]:
            x, context = block(x, context, stack.cond, stack.freqs_cis, stack.attn_mask)
        stack.streams = [x, context]

    def finish(self, stack: HunyuanVideo15Stack) -> torch.Tensor:
        p, p_t = self.config.patch_size, self.config.patch_size_t
        out = stack.shard.gather(self.proj_out(self.norm_out(stack.streams[0], stack.cond)))  # (B, L, C p_t p p)
        batch, frames, rows, cols = stack.grid
        out = out.reshape(batch, frames, rows, cols, -1, p_t, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def modulated_input(self, stack: HunyuanVideo15Stack) -> torch.Tensor:
        return self.transformer_blocks[0].norm1(stack.streams[0], stack.cond)[0]


def _real_tokens_first(
    streams: list[torch.Tensor], masks: list[torch.Tensor], text_start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the real tokens of each stream in order, then their padding, the text's (streams from
    `text_start` on) zeroed: (B, T, D) and its mask, as the checkpoints were trained. A stable sort of the joined
    streams by "is padding" makes that order without leaving the device."""
    tokens, mask = torch.cat(streams, dim=1), torch.cat(masks, dim=1)  # (B, T, D), (B, T)
    first_text = sum(stream.shape[1] for stream in streams[:text_start])
    text_padding = ~mask & (torch.arange(mask.shape[1], device=mask.device) >= first_text)
    tokens = torch.where(text_padding[..., None], torch.zeros_like(tokens), tokens)
    order = torch.argsort((~mask).int(), dim=1, stable=True)  # (B, T): real tokens first, each group in order
    return tokens.gather(1, order[..., None].expand_as(tokens)), mask.gather(1, order)


EntryClass = HunyuanVideo15Transformer3DModel
