"""Z-Image, Tongyi-MAI's single-stream DiT (S3-DiT), written against Easel's layer library.

A sample is one token sequence: its patchified latent image followed by its caption (Qwen3 hidden states). Before
they meet, each stream is refined alone: the image by `noise_refiner` blocks (modulated by the timestep), the
caption by `context_refiner` blocks (not modulated, so their output is the same at every step). Then `layers` run
over [image | caption] with one timestep modulation shared by all tokens, and the image tokens are projected back
to latent patches. Each stream is padded to a multiple of 32 tokens with a learned pad token; those pad tokens are
attended to like any other. Captions of different lengths are batched behind a key-padding mask.

Positions are 3-D (index, row, column): caption token k sits at (1 + k, 0, 0), image token (f, h, w) at
(P + 1 + f, h, w) with P the caption's padded length, pad tokens of the image at (0, 0, 0). They depend only on the
caption lengths and the latent size, so `rotary_emb` computes them (and the masks) once per request.

Module names mirror the keys of Diffusers' `ZImageTransformer2DModel` checkpoints, so those load with
`load_state_dict(strict=True)`; nothing is kept in buffers, so a model built on the meta device is complete once its
checkpoint is assigned.
"""

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from easel.configs.models.dits.z_image import ZImageDitConfig
from easel.runtime.distributed import SequenceShard, split_streams, streams_key_mask
from easel.runtime.layers import (
    ColumnParallelLinear,
    RMSNormCastBeforeWeight,
    RowParallelLinear,
    apply_qk_norm_rope,
    attention,
    gated_residual,
    polar_rope_frequencies,
    timestep_embedding,
)
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT

# The conditioning vector is min(dim, 256) wide; the timestep MLP goes 256 -> 1024 -> that width (fixed by the
# checkpoints, not by config.json).
ADALN_EMBED_DIM = 256
TIMESTEP_SINUSOID_DIM = 256
TIMESTEP_HIDDEN_DIM = 1024
# Every stream (image, caption) is padded to a multiple of this many tokens.
SEQ_MULTI_OF = 32
# Diffusers' attention builds its qk-norm with eps 1e-5 whatever config.norm_eps says.
QK_NORM_EPS = 1e-5
FINAL_NORM_EPS = 1e-6

FreqsCis = tuple[torch.Tensor, torch.Tensor]


def _round_up(length: int) -> int:
    return length + (-length) % SEQ_MULTI_OF


#################################################################################
#                       Positions, rotary tables and masks                      #
#################################################################################


class ZImageRotaryEmbedding(nn.Module):
    """Maps integer position ids (..., 3) to (cos, sin), each (..., head_dim), rounded as Z-Image's tables are."""

    def __init__(self, axes_dims: Sequence[int], theta: float):
        super().__init__()
        self.axes_dims = tuple(axes_dims)
        self.theta = theta

    def forward(self, position_ids: torch.Tensor) -> FreqsCis:
        return polar_rope_frequencies(position_ids, self.axes_dims, self.theta)


@dataclasses.dataclass
class ZImageSequenceLayout:
    """Where the tokens of one batch sit: rotary tables and masks, fixed by caption lengths and latent size."""

    caption_lens: tuple[int, ...]  # real caption tokens per sample
    padded_caption_lens: tuple[int, ...]  # each rounded up to a multiple of 32
    grid: tuple[int, int, int]  # image tokens along (frames, rows, columns)
    padded_image_len: int  # grid tokens rounded up to a multiple of 32, the same for every sample
    caption_freqs: FreqsCis  # (T, head_dim) with T = max padded caption length: caption k at (1 + k, 0, 0)
    unified_freqs: FreqsCis  # (B, N + T, head_dim) over [image | caption | batch padding], N = padded_image_len
    # (B, T) and (B, N + T), True for each sample's own tokens; None when all captions pad to one length, so the
    # attention takes its unmasked fast path.
    caption_mask: torch.Tensor | None
    unified_mask: torch.Tensor | None

    @property
    def image_len(self) -> int:
        """Real (unpadded) image tokens per sample."""
        return math.prod(self.grid)

    @property
    def image_freqs(self) -> FreqsCis:
        """(B, N, head_dim): the image part of the unified tables (its axis-0 offset differs per sample)."""
        cos, sin = self.unified_freqs
        return cos[:, : self.padded_image_len], sin[:, : self.padded_image_len]


def _image_position_ids(grid: tuple[int, int, int], device: torch.device | None) -> torch.Tensor:
    """(F * H * W, 3) ids (f, h, w) in row-major order of the (frames, rows, columns) token grid."""
    axes = [torch.arange(size, device=device) for size in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def build_position_ids(
    padded_caption_lens: Sequence[int], grid: tuple[int, int, int], device: torch.device | None = None
) -> torch.Tensor:
    """(B, N + T, 3) position ids of the unified sequences [image | caption | zeros], as Diffusers lays them out."""
    image_ids = _image_position_ids(grid, device)  # (n, 3)
    padded_image_len = _round_up(len(image_ids))
    total_len = padded_image_len + max(padded_caption_lens)
    ids = torch.zeros(len(padded_caption_lens), total_len, 3, dtype=torch.long, device=device)
    for index, caption_len in enumerate(padded_caption_lens):
        # The image starts on axis 0 right after its caption (which runs 1..caption_len); its pad tokens stay at 0.
        ids[index, : len(image_ids)] = image_ids + torch.tensor([caption_len + 1, 0, 0], device=device)
        ids[index, padded_image_len : padded_image_len + caption_len, 0] = torch.arange(
            1, caption_len + 1, device=device
        )
    return ids


def _length_mask(lengths: Sequence[int], total: int, device: torch.device | None) -> torch.Tensor | None:
    """(B, total) True below each length, or None when every length is `total` (no padding to mask)."""
    if all(length == total for length in lengths):
        return None
    return torch.arange(total, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


class ZImageLayoutEmbedding(nn.Module):
    """Parameter-free: the rotary tables and masks of a batch, from its caption lengths and latent size."""

    def __init__(self, axes_dims: Sequence[int], theta: float):
        super().__init__()
        self.rope_embedder = ZImageRotaryEmbedding(axes_dims, theta)

    def forward(
        self,
        caption_lens: Sequence[int],
        latent_size: tuple[int, int, int],
        patch_size: int = 2,
        f_patch_size: int = 1,
        device: torch.device | str | None = None,
    ) -> ZImageSequenceLayout:
        """Rotary tables and masks for captions of these lengths (one per sample, in batch order) and latents of
        size (F, H, W). Parameter-free and fixed for a request: the pipeline can build it once and pass it to every
        step (with CFG, for the batch [positive prompts, negative prompts])."""
        frames, height, width = latent_size
        if frames % f_patch_size or height % patch_size or width % patch_size:
            raise ValueError(f"latent size {latent_size} is not divisible by the patch ({f_patch_size}, {patch_size})")
        grid = (frames // f_patch_size, height // patch_size, width // patch_size)
        padded_caption_lens = tuple(_round_up(length) for length in caption_lens)
        padded_image_len = _round_up(math.prod(grid))
        max_caption_len = max(padded_caption_lens)

        caption_ids = torch.zeros(max_caption_len, 3, dtype=torch.long, device=device)
        caption_ids[:, 0] = torch.arange(1, max_caption_len + 1)
        unified_ids = build_position_ids(padded_caption_lens, grid, device)
        return ZImageSequenceLayout(
            caption_lens=tuple(caption_lens),
            padded_caption_lens=padded_caption_lens,
            grid=grid,
            padded_image_len=padded_image_len,
            caption_freqs=self.rope_embedder(caption_ids),
            unified_freqs=self.rope_embedder(unified_ids),
            caption_mask=_length_mask(padded_caption_lens, max_caption_len, device),
            unified_mask=_length_mask(
                [padded_image_len + n for n in padded_caption_lens], unified_ids.shape[1], device
            ),
        )


#################################################################################
#                              Block building pieces                            #
#################################################################################


class TimestepEmbedder(nn.Module):
    """The conditioning vector: MLP(sinusoid(t)), 256 -> 1024 -> SiLU -> min(dim, 256)."""

    def __init__(self, out_dim: int):
        super().__init__()
        # Index-style names mirror Diffusers' keys (`mlp.0`, `mlp.2`).
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_SINUSOID_DIM, TIMESTEP_HIDDEN_DIM), nn.SiLU(), nn.Linear(TIMESTEP_HIDDEN_DIM, out_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The sinusoid is float32; cast it to the weights' dtype before the MLP, as Diffusers does.
        return self.mlp(timestep_embedding(t, TIMESTEP_SINUSOID_DIM).to(self.mlp[0].weight.dtype))


class ZImageAttention(nn.Module):
    """Self-attention with per-head RMS qk-norm and rotary embeddings; no biases."""

    def __init__(self, dim: int, n_heads: int, qk_norm: bool):
        super().__init__()
        self.head_dim = dim // n_heads
        # Registration order follows Diffusers' so state-dict keys come out in the same order.
        self.norm_q = RMSNormCastBeforeWeight(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None
        self.norm_k = RMSNormCastBeforeWeight(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None
        self.to_q = ColumnParallelLinear(dim, dim, bias=False)
        self.to_k = ColumnParallelLinear(dim, dim, bias=False)
        self.to_v = ColumnParallelLinear(dim, dim, bias=False)
        # A list so the key is `to_out.0`, as in Diffusers' checkpoints (its index 1 is a no-op dropout).
        self.to_out = nn.ModuleList([RowParallelLinear(dim, dim, bias=False)])

    def forward(self, x: torch.Tensor, freqs_cis: FreqsCis, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, D); freqs_cis (L, head_dim) or (B, L, head_dim) each; attn_mask (B, L) or None."""
        split = (-1, self.head_dim)  # the head count follows from the width, which TP will shard
        query, key, value = (proj(x).unflatten(-1, split) for proj in (self.to_q, self.to_k, self.to_v))
        query, key = apply_qk_norm_rope(query, key, self.norm_q, self.norm_k, *freqs_cis)
        out = attention(query, key, value, attn_mask).flatten(2)  # (B, L, D)
        return self.to_out[0](out)


class SwiGLUFeedForward(nn.Module):
    """The transformer MLP: w2(SiLU(w1 x) * w3 x), without biases."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = ColumnParallelLinear(dim, hidden_dim, bias=False)
        self.w2 = RowParallelLinear(hidden_dim, dim, bias=False)
        self.w3 = ColumnParallelLinear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


#################################################################################
#                                 Z-Image blocks                                #
#################################################################################


class ZImageTransformerBlock(nn.Module):
    """Pre- and post-normed (sandwich) attention and MLP, optionally scaled and tanh-gated by the timestep."""

    def __init__(self, dim: int, n_heads: int, norm_eps: float, qk_norm: bool, modulation: bool):
        super().__init__()
        self.attention = ZImageAttention(dim, n_heads, qk_norm)
        self.feed_forward = SwiGLUFeedForward(dim, int(dim / 3 * 8))
        self.attention_norm1 = RMSNormCastBeforeWeight(dim, eps=norm_eps)
        self.ffn_norm1 = RMSNormCastBeforeWeight(dim, eps=norm_eps)
        self.attention_norm2 = RMSNormCastBeforeWeight(dim, eps=norm_eps)
        self.ffn_norm2 = RMSNormCastBeforeWeight(dim, eps=norm_eps)
        # A Sequential for the key `adaLN_modulation.0`; unlike most adaLN there is no SiLU before it.
        self.adaLN_modulation = nn.Sequential(nn.Linear(min(dim, ADALN_EMBED_DIM), 4 * dim)) if modulation else None

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A modulated block's (scale_msa, gate_msa, scale_mlp, gate_mlp) for cond (B, min(D, 256))."""
        # (B, 1, D) each: only scales (no shifts), and tanh-bounded gates.
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(cond).unsqueeze(1).chunk(4, dim=2)
        gate_msa, gate_mlp = gate_msa.tanh(), gate_mlp.tanh()
        scale_msa, scale_mlp = 1.0 + scale_msa, 1.0 + scale_mlp
        return scale_msa, gate_msa, scale_mlp, gate_mlp

    def modulated_input(self, x: torch.Tensor, scale_msa: torch.Tensor) -> torch.Tensor:
        """The self-attention's input in a modulated block: x (B, L, D) normed, then scaled by `modulation`'s first."""
        return self.attention_norm1(x) * scale_msa

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: FreqsCis,
        attn_mask: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, D); cond (B, min(D, 256)), required by modulated blocks (the image and joint ones)."""
        if self.adaLN_modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), freqs_cis, attn_mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))

        scale_msa, gate_msa, scale_mlp, gate_mlp = self.modulation(cond)
        attn_out = self.attention(self.modulated_input(x, scale_msa), freqs_cis, attn_mask)
        x = gated_residual(x, gate_msa, self.attention_norm2(attn_out))
        return gated_residual(x, gate_mlp, self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * scale_mlp)))


class FinalLayer(nn.Module):
    """LayerNorm scaled (not shifted) by the conditioning, then the projection to latent patches."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=FINAL_NORM_EPS)
        self.linear = nn.Linear(dim, out_dim)
        # Index 1 for the key `adaLN_modulation.1`; index 0 is the SiLU.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, ADALN_EMBED_DIM), dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.adaLN_modulation(cond)  # (B, D)
        return self.linear(self.norm_final(x) * scale[:, None])


#################################################################################
#                                 Z-Image model                                 #
#################################################################################


def _patchify(x: torch.Tensor, patch_size: int, f_patch_size: int) -> torch.Tensor:
    """(B, C, F, H, W) latents -> (B, F/pf * H/p * W/p, pf * p * p * C) patches, (f, h, w) row-major."""
    batch, channels, frames, height, width = x.shape
    p, pf = patch_size, f_patch_size
    x = x.view(batch, channels, frames // pf, pf, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(batch, -1, pf * p * p * channels)


def _unpatchify(
    patches: torch.Tensor, grid: tuple[int, int, int], channels: int, patch_size: int, f_patch_size: int
) -> torch.Tensor:
    """The inverse of `_patchify`: (B, F' * H' * W', pf * p * p * C) -> (B, C, F, H, W)."""
    (frames, rows, cols), p, pf = grid, patch_size, f_patch_size
    x = patches.view(-1, frames, rows, cols, pf, p, p, channels)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(-1, channels, frames * pf, rows * p, cols * p)


@dataclasses.dataclass
class ZImageStack(BlockStack):
    """Z-Image's state between joint layers: streams = [image (B, N / S, D), captions (B, T / S, D)], refined."""

    cond: torch.Tensor  # (B, min(D, 256))
    freqs_cis: FreqsCis  # (B, N / S + T / S, head_dim) each: this rank's image then caption positions
    attn_mask: torch.Tensor | None  # (B, N / S + T / S), or None: caption batch padding and SP padding
    layout: ZImageSequenceLayout
    key: str  # the patching's embedder and final layer, f"{patch_size}-{f_patch_size}"
    patch_size: int
    f_patch_size: int


class ZImageTransformer2DModel(BlockStackDiT):
    """The Z-Image transformer: latents, flow time and per-sample caption features -> the model output."""

    cache_family = "z-image"
    block_lists = ("noise_refiner", "context_refiner", "siglip_refiner", "layers")

    def __init__(self, config: ZImageDitConfig):
        super().__init__()
        self.config = config
        dim, heads = config.dim, config.n_heads
        if len(config.all_patch_size) != len(config.all_f_patch_size):
            raise ValueError("all_patch_size and all_f_patch_size must have the same length")
        if sum(config.axes_dims) != dim // heads:
            raise ValueError(f"axes_dims {config.axes_dims} must sum to the head dim {dim // heads}")
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels  # Diffusers ignores any out_channels

        def block(modulation: bool) -> ZImageTransformerBlock:
            return ZImageTransformerBlock(dim, heads, config.norm_eps, config.qk_norm, modulation)

        # Registration order follows Diffusers' so state-dict keys come out in the same order.
        patchings = list(zip(config.all_patch_size, config.all_f_patch_size, strict=True))
        self.all_x_embedder = nn.ModuleDict(
            {f"{p}-{pf}": nn.Linear(pf * p * p * config.in_channels, dim) for p, pf in patchings}
        )
        self.all_final_layer = nn.ModuleDict(
            {f"{p}-{pf}": FinalLayer(dim, p * p * pf * self.out_channels) for p, pf in patchings}
        )
        self.noise_refiner = nn.ModuleList([block(modulation=True) for _ in range(config.n_refiner_layers)])
        self.context_refiner = nn.ModuleList([block(modulation=False) for _ in range(config.n_refiner_layers)])
        self.t_embedder = TimestepEmbedder(min(dim, ADALN_EMBED_DIM))
        self.cap_embedder = nn.Sequential(
            RMSNormCastBeforeWeight(config.cap_feat_dim, eps=config.norm_eps), nn.Linear(config.cap_feat_dim, dim)
        )
        if config.siglip_feat_dim is not None:
            # Omni checkpoints' SigLIP branch: loaded so their checkpoints load strictly, unused by text-to-image.
            self.siglip_embedder = nn.Sequential(
                RMSNormCastBeforeWeight(config.siglip_feat_dim, eps=config.norm_eps),
                nn.Linear(config.siglip_feat_dim, dim),
            )
            self.siglip_refiner = nn.ModuleList([block(modulation=False) for _ in range(config.n_refiner_layers)])
            self.siglip_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.x_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.layers = nn.ModuleList([block(modulation=True) for _ in range(config.n_layers)])

        # Parameter-free: the pipeline calls it once per request and passes the layout to every step.
        self.rotary_emb = ZImageLayoutEmbedding(config.axes_dims, config.rope_theta)

    def _embed_captions(self, cap_feats: Sequence[torch.Tensor], layout: ZImageSequenceLayout) -> torch.Tensor:
        """Caption features B x (L_i, cap_feat_dim) -> (B, T, D): tokens, then pad tokens to a multiple of 32,
        then zeros (batch padding, masked)."""
        lengths = [len(feats) for feats in cap_feats]
        if tuple(lengths) != layout.caption_lens:
            raise ValueError(f"caption lengths {lengths} do not match the layout's {list(layout.caption_lens)}")
        embedded = self.cap_embedder(torch.cat(list(cap_feats)))  # (sum L_i, D): one matmul for the batch
        captions = embedded.new_zeros(len(lengths), max(layout.padded_caption_lens), embedded.shape[-1])
        for index, (tokens, padded_len) in enumerate(
            zip(embedded.split(lengths), layout.padded_caption_lens, strict=True)
        ):
            captions[index, : len(tokens)] = tokens
            captions[index, len(tokens) : padded_len] = self.cap_pad_token
        return captions

    @property
    def num_blocks(self) -> int:
        return len(self.layers)

    def embed(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        t: torch.Tensor,
        cap_feats: Sequence[torch.Tensor],
        patch_size: int = 2,
        f_patch_size: int = 1,
        layout: ZImageSequenceLayout | None = None,
    ) -> ZImageStack:
        """
        x: latents (B, C, F, H, W), F = 1 for images (the pipeline's (B, C, H, W) unsqueezed at dim 2), or, as
            Diffusers takes them, a list of B (C, F, H, W) latents of one size;
        t: (B,) flow time 1 - sigma in [0, 1] (Diffusers' pipeline passes (1000 - timestep) / 1000);
        cap_feats: B caption features (L_i, cap_feat_dim), each sample's unpadded tokens (lengths may differ);
        layout: `rotary_emb(caption lengths, (F, H, W), patch_size, f_patch_size)`, built here when None.
        The model's output is (B, C, F, H, W); the flow velocity the scheduler steps with is its negation.
        """
        if not isinstance(x, torch.Tensor):
            x = torch.stack(list(x))
        batch, _, frames, height, width = x.shape
        key = f"{patch_size}-{f_patch_size}"
        if key not in self.all_x_embedder:
            raise ValueError(f"no weights for patch size {key!r}; this checkpoint has {list(self.all_x_embedder)}")
        if len(cap_feats) != batch:
            raise ValueError(f"{len(cap_feats)} captions for {batch} latents")
        if layout is None:
            caption_lens = [len(feats) for feats in cap_feats]
            layout = self.rotary_emb(caption_lens, (frames, height, width), patch_size, f_patch_size, x.device)

        # Scale by t_scale in t's dtype (float32), then cast the embedding to the activations' dtype, like Diffusers.
        cond = self.t_embedder(t * self.config.t_scale).type_as(x)  # (B, min(D, 256))

        # Sequence parallelism: the image and the caption streams (learned pad tokens included, as attention sees
        # them) are each split across the SP group on their own, padded where they do not divide, rather than the
        # caption replicated on every rank: each refiner then attends within its own sharded stream and the joint
        # layers over both, and every layer but attention is per token, so the caption's refiner and MLPs split too.
        # The layout's rotary tables and masks are split with the same shards (S ranks); at SP size 1 nothing moves.
        shards = (SequenceShard.of(layout.padded_image_len), SequenceShard.of(max(layout.padded_caption_lens)))
        image_shard, caption_shard = shards

        # Image stream: embed the patches, pad with the learned pad token, refine under the timestep.
        image = self.all_x_embedder[key](_patchify(x, patch_size, f_patch_size))  # (B, n, D)
        pad = self.x_pad_token.expand(batch, layout.padded_image_len - image.shape[1], -1)
        image = image_shard.split(torch.cat([image, pad], dim=1))  # (B, N / S, D)
        image_freqs = tuple(image_shard.split(table) for table in layout.image_freqs)
        image_mask = streams_key_mask([image_shard], batch, x.device)  # images are one size: None unless SP pads
        for block in self.noise_refiner:
            image = block(image, image_freqs, image_mask, cond)

        # Caption stream: independent of the timestep, so its refined output is the same at every step.
        captions = caption_shard.split(self._embed_captions(cap_feats, layout))  # (B, T / S, D)
        caption_freqs = tuple(caption_shard.split(table, dim=0) for table in layout.caption_freqs)
        caption_mask = streams_key_mask([caption_shard], batch, x.device, layout.caption_mask)
        for block in self.context_refiner:
            captions = block(captions, caption_freqs, caption_mask)

        # The joint layers' rotary tables and mask, over [image | caption | batch padding], this rank's part of each.
        unified_freqs = tuple(split_streams(table, shards) for table in layout.unified_freqs)
        unified_mask = streams_key_mask(shards, batch, x.device, layout.unified_mask)
        return ZImageStack(
            [image, captions], image_shard, cond, unified_freqs, unified_mask, layout, key, patch_size, f_patch_size
        )

    def run_blocks(self, stack: ZImageStack, start: int, end: int) -> None:
        layers = self.layers[start:end]
        if not len(layers):
            return
        image, captions = stack.streams
        # Joint stream [image | caption | batch padding], this rank's part of each. Diffusers zeroes the batch
        # padding here; ours keeps the (finite) refiner outputs there, which the masks keep out of every real
        # token's result. The layers are per token apart from attention, so concatenating once per span gives the
        # same result as once per forward.
        image_len = image.shape[1]
        x_joint = torch.cat([image, captions], dim=1)  # (B, N / S + T / S, D)
        for block in layers:
            x_joint = block(x_joint, stack.freqs_cis, stack.attn_mask, stack.cond)
        stack.streams = [x_joint[:, :image_len], x_joint[:, image_len:]]

    def finish(self, stack: ZImageStack) -> torch.Tensor:
        layout, image_shard = stack.layout, stack.shard
        # The final layer works per token, so only the real image tokens go through it; under SP, this rank's part
        # of the image stream, pad tokens included (every rank's part must be as long for the gather), gathered once
        # after it, at its narrow width.
        local_image = stack.streams[0][:, : image_shard.local_length if image_shard.size > 1 else layout.image_len]
        out = self.all_final_layer[stack.key](local_image, stack.cond)  # (B, N / S, pf * p * p * C)
        out = image_shard.gather(out)[:, : layout.image_len]  # (B, n, pf * p * p * C)
        return _unpatchify(out, layout.grid, self.out_channels, stack.patch_size, stack.f_patch_size)

    def modulated_input(self, stack: ZImageStack) -> torch.Tensor:
        # The joint layers' modulation is one vector per sample, the same for every token: the image stream alone
        # gives its image tokens' part.
        layer = self.layers[0]
        return layer.modulated_input(stack.streams[0], layer.modulation(stack.cond)[0])


EntryClass = ZImageTransformer2DModel
