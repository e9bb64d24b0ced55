"""Stable Diffusion 3 / 3.5, the rectified-flow MMDiT of Stability AI, written against Easel's layer library.

Latents are cut into 2x2 patches, embedded, and given a fixed 2D sin-cos position table (a centred crop of a
`pos_embed_max_size`^2 table, so any resolution up to that size works). Image and text tokens then run through
MMDiT blocks: separate weights per stream, one joint attention over [image | text], everything modulated (adaLN)
by one conditioning vector built from the timestep and the pooled CLIP embeddings. SD3.5 adds qk RMSNorm and, in
its `dual_attention_layers`, a second image-only self-attention per block. The last block only updates the image
stream. Module names mirror the keys of Diffusers' `SD3Transformer2DModel` checkpoints, so those load with
`load_state_dict(strict=True)`; the one non-parameter tensor, the position table, is in those checkpoints too, so a
model built on the meta device is complete once its checkpoint is assigned.
"""

import dataclasses
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from easel.configs.models.dits.sd3 import SD3DitConfig
from easel.runtime.distributed import SequenceShard, streams_key_mask
from easel.runtime.layers import (
    AdaLNContinuous,
    ColumnParallelLinear,
    FeedForward,
    LayerNormScaleShift,
    MLPEmbedder,
    RMSNormCastBeforeWeight,
    RowParallelLinear,
    attention,
    gated_residual,
    modulate,
    project_qkv,
    timestep_embedding,
)
from easel.runtime.layers.embeddings import sincos_2d_position_embedding
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT

# The sinusoid width the timestep embedder starts from (fixed by the SD3 checkpoints).
TIMESTEP_SINUSOID_DIM = 256
NORM_EPS = 1e-6
QK_NORMS = (None, "rms_norm")


#################################################################################
#                    Inputs: patches, positions, conditioning                   #
#################################################################################


class PatchEmbed(nn.Module):
    """(B, C, H, W) latents -> (B, H/p * W/p, D) patch tokens plus their 2D sin-cos position embedding."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, sample_size: int, pos_embed_max_size: int | None):
        super().__init__()
        self.dim = dim
        self.patch_size = patch_size
        self.pos_embed_max_size = pos_embed_max_size
        # Positions are scaled so that the default resolution's grid spans `base_size` units.
        self.base_size = sample_size // patch_size
        # A strided convolution, as in the checkpoints (`proj.weight` is (D, C, p, p)).
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        if pos_embed_max_size:
            # A fixed function of the config, but SD3 checkpoints store it (key `pos_embed.pos_embed`), so it is a
            # persistent buffer here too: on the meta device it is filled by the checkpoint like any weight.
            table = sincos_2d_position_embedding(dim, pos_embed_max_size, pos_embed_max_size, self.base_size)
            self.register_buffer("pos_embed", table[None], persistent=True)  # (1, M * M, D)

    def position_embedding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """The (1, h * w, D) table of an h x w patch grid: the centre crop of the stored M x M table."""
        if not self.pos_embed_max_size:
            # Checkpoints without a stored table: computed for the grid at hand (Diffusers' interpolation).
            table = sincos_2d_position_embedding(
                self.dim, grid_height, grid_width, self.base_size, device=self.proj.weight.device
            )
            return table[None]
        size = self.pos_embed_max_size
        if grid_height > size or grid_width > size:
            raise ValueError(
                f"a {grid_height}x{grid_width} patch grid exceeds this model's {size}x{size} position table; "
                f"use at most {size * self.patch_size} latent rows and columns"
            )
        top, left = (size - grid_height) // 2, (size - grid_width) // 2
        table = self.pos_embed.reshape(1, size, size, -1)[:, top : top + grid_height, left : left + grid_width]
        return table.reshape(1, grid_height * grid_width, -1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        grid_height, grid_width = latents.shape[-2] // self.patch_size, latents.shape[-1] // self.patch_size
        x = self.proj(latents).flatten(2).transpose(1, 2)  # (B, h * w, D)
        # The add runs in the table's dtype (float32 unless the model was cast), then rounds to x's, as Diffusers.
        x = (x + self.position_embedding(grid_height, grid_width)).to(x.dtype)
        # The sum keeps the transposed (channels-first) layout; make it token-major for the linear layers.
        return x.contiguous()


class TimeTextEmbedding(nn.Module):
    """The conditioning vector: MLP(sinusoid(t)) + MLP(pooled CLIP-L | CLIP-G embedding)."""

    def __init__(self, dim: int, pooled_projection_dim: int):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(TIMESTEP_SINUSOID_DIM, dim)
        self.text_embedder = MLPEmbedder(pooled_projection_dim, dim)

    def forward(self, timestep: torch.Tensor, pooled_projections: torch.Tensor) -> torch.Tensor:
        # The sinusoid is float32 (of the float32 timestep); cast it to the weights' dtype before the MLP.
        sinusoid = timestep_embedding(timestep, TIMESTEP_SINUSOID_DIM).to(pooled_projections.dtype)
        return self.timestep_embedder(sinusoid) + self.text_embedder(pooled_projections)  # (B, D)


#################################################################################
#                              Block building pieces                            #
#################################################################################


class AdaLNZero(nn.Module):
    """adaLN-Zero: the affine-free LayerNorm of the tokens and `num_vectors` (B, D) modulation vectors."""

    def __init__(self, dim: int, num_vectors: int):
        super().__init__()
        self.dim = dim
        self.num_vectors = num_vectors
        self.linear = nn.Linear(dim, num_vectors * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        # The norm is returned unmodulated: dual-attention blocks modulate it twice, with different vectors.
        vectors = self.linear(F.silu(cond)).chunk(self.num_vectors, dim=1)
        return F.layer_norm(x, (self.dim,), eps=NORM_EPS), vectors


class SD3Attention(nn.Module):
    """Multi-head attention with optional qk RMSNorm; joint over [image | text] when it has a text stream.

    `text_stream`: None for image-only self-attention (SD3.5's second attention); "full" for the joint attention of
    a block that updates both streams; "pre_only" for the last block's, whose text output is never used.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, qk_norm: str | None, text_stream: str | None = None):
        super().__init__()
        if qk_norm not in QK_NORMS:
            raise ValueError(f"unsupported qk_norm {qk_norm!r}; SD3 checkpoints use one of {QK_NORMS}")
        self.head_dim = head_dim
        inner_dim = num_heads * head_dim
        # Registration order follows Diffusers' so state-dict keys come out in the same order. The qk-norm rounds
        # like Diffusers' RMSNorm (before its half-precision weight), which keeps bf16 outputs bitwise equal.
        self.norm_q = RMSNormCastBeforeWeight(head_dim, eps=NORM_EPS) if qk_norm else None
        self.norm_k = RMSNormCastBeforeWeight(head_dim, eps=NORM_EPS) if qk_norm else None
        self.to_q = ColumnParallelLinear(dim, inner_dim)
        self.to_k = ColumnParallelLinear(dim, inner_dim)
        self.to_v = ColumnParallelLinear(dim, inner_dim)
        if text_stream is not None:
            # Even the last block projects text queries (its checkpoint has them); only their output is dropped.
            self.add_k_proj = ColumnParallelLinear(dim, inner_dim)
            self.add_v_proj = ColumnParallelLinear(dim, inner_dim)
            self.add_q_proj = ColumnParallelLinear(dim, inner_dim)
        # A list so the key is `to_out.0`, as in Diffusers' checkpoints (its index 1 is a no-op dropout).
        self.to_out = nn.ModuleList([RowParallelLinear(inner_dim, dim)])
        self.to_add_out = RowParallelLinear(inner_dim, dim) if text_stream == "full" else None
        self.norm_added_q = RMSNormCastBeforeWeight(head_dim, eps=NORM_EPS) if qk_norm and text_stream else None
        self.norm_added_k = RMSNormCastBeforeWeight(head_dim, eps=NORM_EPS) if qk_norm and text_stream else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Image-only: x (B, L, D) -> (B, L, D). Joint: x and the text tokens context (B, T, D) -> (image output,
        text output or None for "pre_only"). attn_mask: (B, L) or (B, L + T) key mask of those keys, or None; only
        sequence parallelism's padding sets it."""
        query, key, value = project_qkv(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k, self.head_dim)
        if context is None:
            return self.to_out[0](attention(query, key, value, attn_mask).flatten(2))

        context_qkv = project_qkv(
            context,
            self.add_q_proj,
            self.add_k_proj,
            self.add_v_proj,
            self.norm_added_q,
            self.norm_added_k,
            self.head_dim,
        )
        # Image tokens first (FLUX puts text first), as the mask has them.
        query, key, value = (torch.cat([s, c], dim=1) for s, c in zip((query, key, value), context_qkv, strict=True))
        out = attention(query, key, value, attn_mask).flatten(2)  # (B, L + T, inner)
        out, context_out = out.split([x.shape[1], context.shape[1]], dim=1)
        # The halves are strided views, passed on as they are, like Diffusers, so kernels (and bf16 bits) agree.
        context_out = self.to_add_out(context_out) if self.to_add_out is not None else None
        return self.to_out[0](out), context_out


#################################################################################
#                                   MMDiT block                                 #
#################################################################################


class SD3JointBlock(nn.Module):
    """MMDiT block: image and text streams with their own weights, mixed only by a joint attention.

    `context_pre_only` (the last block): the text stream only feeds keys and values and is passed on unchanged.
    `dual_attention` (SD3.5-medium's first blocks): the image stream also runs a self-attention of its own, from
    the same norm with its own modulation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        qk_norm: str | None,
        context_pre_only: bool,
        dual_attention: bool,
    ):
        super().__init__()
        self.context_pre_only = context_pre_only
        # Six vectors (attention shift/scale/gate, MLP shift/scale/gate), three more for the second attention.
        self.norm1 = AdaLNZero(dim, num_vectors=9 if dual_attention else 6)
        self.norm1_context = AdaLNContinuous(dim) if context_pre_only else AdaLNZero(dim, num_vectors=6)
        self.attn = SD3Attention(dim, num_heads, head_dim, qk_norm, "pre_only" if context_pre_only else "full")
        self.attn2 = SD3Attention(dim, num_heads, head_dim, qk_norm) if dual_attention else None
        self.norm2 = LayerNormScaleShift(dim, eps=NORM_EPS)
        self.ff = FeedForward(dim)
        if not context_pre_only:
            self.norm2_context = LayerNormScaleShift(dim, eps=NORM_EPS)
            self.ff_context = FeedForward(dim)

    def modulate_image(
        self, x: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The joint attention's image input (the norm of x (B, L, D), shifted and scaled by adaLN), the unmodulated
        norm (dual attention modulates it again) and the other (B, D) vectors: gate_msa, the MLP's shift, scale and
        gate, then the second attention's three."""
        x_norm, (shift_msa, scale_msa, *rest) = self.norm1(x, cond)
        return modulate(x_norm, shift_msa, scale_msa), x_norm, rest

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        cond: torch.Tensor,
        joint_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: image tokens (B, L, D); context: text tokens (B, T, D); cond: (B, D); joint_mask (B, L + T) and
        image_mask (B, L): the key masks of the joint and the image-only attention, or None. Returns (x, context);
        the last block returns context as it came in."""
        x_in, x_norm, (gate_msa, shift_mlp, scale_mlp, gate_mlp, *second) = self.modulate_image(x, cond)
        if self.context_pre_only:
            context_in = self.norm1_context(context, cond)
        else:
            c_norm, (c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.norm1_context(
                context, cond
            )
            context_in = modulate(c_norm, c_shift_msa, c_scale_msa)
        attn_out, context_attn_out = self.attn(x_in, context_in, joint_mask)

        # Gated residuals: the gates are (B, D), shared by all tokens of a sample.
        x = gated_residual(x, gate_msa, attn_out)
        if self.attn2 is not None:
            shift_msa2, scale_msa2, gate_msa2 = second
            x = gated_residual(x, gate_msa2, self.attn2(modulate(x_norm, shift_msa2, scale_msa2), attn_mask=image_mask))
        x = gated_residual(x, gate_mlp, self.ff(self.norm2(x, shift_mlp, scale_mlp)))
        if self.context_pre_only:
            return x, context

        context = gated_residual(context, c_gate_msa, context_attn_out)
        context_mlp = self.ff_context(self.norm2_context(context, c_shift_mlp, c_scale_mlp))
        context = gated_residual(context, c_gate_mlp, context_mlp)
        return x, context


#################################################################################
#                                  SD3 model                                    #
#################################################################################


@dataclasses.dataclass
class SD3Stack(BlockStack):
    """SD3's state between blocks: streams = [image (B, L / N, D), text (B, T / N, D)]."""

    cond: torch.Tensor  # (B, D)
    joint_mask: torch.Tensor | None  # (B, L + T) key mask of the joint attention; only SP padding sets it
    image_mask: torch.Tensor | None  # (B, L) key mask of the image-only attention (SD3.5's attn2); likewise
    skip: frozenset[int]  # absolute indices of the blocks to leave out (skip-layer guidance)
    batch: int  # B, H and W of the latents, for unpatchifying the output
    height: int
    width: int


class SD3Transformer2DModel(BlockStackDiT):
    """The SD3 / SD3.5 transformer: latents, text embeddings and conditioning -> velocity."""

    cache_family = "sd3"
    block_lists = ("transformer_blocks",)

    def __init__(self, config: SD3DitConfig):
        super().__init__()
        self.config = config
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        dim = heads * head_dim
        self.out_channels = config.out_channels or config.in_channels
        if config.caption_projection_dim != dim:
            # The text stream shares the blocks' width; the field exists only because Diffusers names it.
            raise ValueError(
                f"caption_projection_dim {config.caption_projection_dim} must equal heads x head_dim {dim}"
            )

        self.pos_embed = PatchEmbed(
            config.in_channels, dim, config.patch_size, config.sample_size, config.pos_embed_max_size
        )
        self.time_text_embed = TimeTextEmbedding(dim, config.pooled_projection_dim)
        self.context_embedder = nn.Linear(config.joint_attention_dim, config.caption_projection_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                SD3JointBlock(
                    dim,
                    heads,
                    head_dim,
                    config.qk_norm,
                    context_pre_only=index == config.num_layers - 1,
                    dual_attention=index in config.dual_attention_layers,
                )
                for index in range(config.num_layers)
            ]
        )
        self.norm_out = AdaLNContinuous(dim)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * self.out_channels)

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks)

    def embed(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        skip_layers: Collection[int] | None = None,
    ) -> SD3Stack:
        """
        hidden_states: latents (B, in_channels, H, W), H and W multiples of patch_size;
        encoder_hidden_states: [CLIP-L | CLIP-G | zero pad] tokens then T5 tokens (B, T, joint_attention_dim);
        pooled_projections: [CLIP-L | CLIP-G] pooled embeddings (B, pooled_projection_dim);
        timestep: sigma * 1000, i.e. the scheduler's timesteps in [0, 1000], (B,), float32;
        skip_layers: indices of blocks to leave out (skip-layer guidance runs a second pass with some skipped).
        The model's output is the predicted velocity (B, out_channels, H, W).
        """
        batch, _, height, width = hidden_states.shape
        skip = frozenset(skip_layers or ())

        # (B, L, D), L = (H/p) * (W/p); the position table is added to the whole grid, before the split below.
        x = self.pos_embed(hidden_states)
        cond = self.time_text_embed(timestep, pooled_projections)  # (B, D)
        context = self.context_embedder(encoder_hidden_states)  # (B, T, D)

        # Sequence parallelism: image and text tokens are both split across the SP group, each stream on its own
        # (padded where it does not divide), rather than the text replicated: every block is per-token but for
        # attention, which then needs no notion of streams, and the text's MLPs split too. At SP size 1 nothing moves.
        shards = (SequenceShard.of(x.shape[1]), SequenceShard.of(context.shape[1]))  # image first, as in attention
        x, context = shards[0].split(x), shards[1].split(context)  # (B, L / N, D), (B, T / N, D)
        # The key masks of the joint and the image-only (SD3.5's attn2) attention: None unless a stream is padded.
        joint_mask = streams_key_mask(shards, batch, x.device)
        image_mask = streams_key_mask(shards[:1], batch, x.device)
        return SD3Stack([x, context], shards[0], cond, joint_mask, image_mask, skip, batch, height, width)

    def run_blocks(self, stack: SD3Stack, start: int, end: int) -> None:
        x, context = stack.streams
        for index, block in enumerate(self.transformer_blocks[start:end], start=start):
            if index not in stack.skip:  # a skipped block passes both streams through unchanged
                x, context = block(x, context, stack.cond, stack.joint_mask, stack.image_mask)
        stack.streams = [x, context]

    def finish(self, stack: SD3Stack) -> torch.Tensor:
        batch, height, width, patch = stack.batch, stack.height, stack.width, self.config.patch_size
        x = self.proj_out(self.norm_out(stack.streams[0], stack.cond))  # (B, L / N, p * p * C)
        x = stack.shard.gather(x)  # the whole image from every rank's part, once, at the narrowest width
        # Unpatchify: token (i, j) holds the p x p patch at rows i*p.., columns j*p.., channels last.
        x = x.reshape(batch, height // patch, width // patch, patch, patch, self.out_channels)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, H/p, p, W/p, p)
        return x.reshape(batch, self.out_channels, height, width)

    def modulated_input(self, stack: SD3Stack) -> torch.Tensor:
        return self.transformer_blocks[0].modulate_image(stack.streams[0], stack.cond)[0]


EntryClass = SD3Transformer2DModel
