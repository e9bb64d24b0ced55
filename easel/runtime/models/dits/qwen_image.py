"""Qwen-Image, the 20B MMDiT of the Qwen team, written against Easel's layer library.

Every block is dual-stream: text and image tokens keep their own weights (modulation, qkv, MLP) and meet only in
one joint attention; there are no single-stream blocks. Each stream is modulated (adaLN) by the timestep embedding
alone; the prompt enters only as tokens. The image sequence can hold several grids one after the other: the noisy
latents first, then (Edit, Edit-Plus) reference-image latents or (Layered) one grid per layer and the input image.
Rotary positions are 3D (frame, row, column) with rows and columns centred on the grid, and text positions start
just past the largest image grid's half-size. Module names mirror the keys of Diffusers'
`QwenImageTransformer2DModel`, so its checkpoints load with `load_state_dict(strict=True)`; nothing is kept in
buffers, so a model built on the meta device is complete once its checkpoint is assigned.
"""

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from easel.configs.models.dits.qwen_image import QwenImageDitConfig
from easel.runtime.distributed import SequenceShard, split_streams, streams_key_mask
from easel.runtime.layers import (
    AdaLNContinuous,
    ColumnParallelLinear,
    FeedForward,
    LayerNormScaleShift,
    MLPEmbedder,
    RMSNormCastBeforeWeight,
    RowParallelLinear,
    attention,
    clip_fp16,
    gated_residual,
    project_qkv,
    split_rope,
    timestep_embedding,
)
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT

# The sinusoid width of the timestep embedder, and the 1000x it scales sigma by (fixed by the checkpoints).
TIMESTEP_SINUSOID_DIM = 256
TIMESTEP_SCALE = 1000.0
ROPE_THETA = 10000.0
EPS = 1e-6

FreqsCis = tuple[torch.Tensor, torch.Tensor]
# One image grid of the sequence, in packed (2x2-patch) tokens: (frames, rows, columns).
ImageShape = tuple[int, int, int]


#################################################################################
#                        Conditioning: positions, timestep                      #
#################################################################################


def _axis_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> FreqsCis:
    """cos and sin (N, dim) of integer positions (N,) on one rotary axis, each frequency repeated for its pair."""
    # In float32 throughout, as Diffusers' QwenEmbedRope builds its tables: angles of text positions reach the
    # thousands, where float32 and float64 angles differ by up to about 1e-4.
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device).div(dim)
    inv_freq = 1.0 / torch.pow(theta, exponents)  # (dim/2,)
    angles = torch.outer(positions.to(torch.float32), inv_freq)  # (N, dim/2)
    # Through torch.polar like Diffusers: its cos/sin kernels differ from torch.cos/sin in the last bit.
    rotations = torch.polar(torch.ones_like(angles), angles)
    return rotations.real.repeat_interleave(2, dim=1), rotations.imag.repeat_interleave(2, dim=1)


class QwenImageRotaryEmbedding(nn.Module):
    """Maps one sample's image grids and its text length to (cos, sin), each (T + L, head_dim), text first."""

    def __init__(self, axes_dims: Sequence[int], theta: float = ROPE_THETA, layer3d: bool = False):
        super().__init__()
        self.axes_dims = tuple(axes_dims)
        self.theta = theta
        self.layer3d = layer3d

    def position_ids(self, img_shapes: Sequence[ImageShape], txt_seq_len: int) -> torch.Tensor:
        """Integer (frame, row, column) of every token, (T + L, 3): the T text tokens, then each grid row-major.

        Grid i sits at frames i.., its rows and columns centred (-(h - h // 2) .. h // 2 - 1). With the layer-3D
        rotary (Layered) the last grid, the input image, sits at frame -1 instead. Text token j sits at (p, p, p),
        p = offset + j, the offset clearing every grid's positive half (and, layer-3D, every layer index).
        """
        grids = []
        for index, (frames, height, width) in enumerate(img_shapes):
            is_layered_input = self.layer3d and index == len(img_shapes) - 1
            frame_ids = torch.full((frames,), -1) if is_layered_input else torch.arange(index, index + frames)
            row_ids = torch.arange(height) - (height - height // 2)
            col_ids = torch.arange(width) - (width - width // 2)
            grid = torch.stack(torch.meshgrid(frame_ids, row_ids, col_ids, indexing="ij"), dim=-1)
            grids.append(grid.reshape(-1, 3))
        offset = max(max(height // 2, width // 2) for _, height, width in img_shapes)
        if self.layer3d:
            offset = max(offset, len(img_shapes) - 1)
        text = (offset + torch.arange(txt_seq_len))[:, None].expand(-1, 3)
        return torch.cat([text, *grids])

    def forward(
        self, img_shapes: Sequence[ImageShape], txt_seq_len: int, device: torch.device | str | None = None
    ) -> FreqsCis:
        """img_shapes: the grids of one sample, in sequence order (every sample of a batch shares them)."""
        position_ids = self.position_ids(img_shapes, txt_seq_len).to(device)
        bands = [_axis_cos_sin(position_ids[:, axis], dim, self.theta) for axis, dim in enumerate(self.axes_dims)]
        return torch.cat([cos for cos, _ in bands], dim=1), torch.cat([sin for _, sin in bands], dim=1)


class TimestepEmbedding(nn.Module):
    """The conditioning vector: MLP(sinusoid(1000 sigma)) [+ a learned embedding of an extra integer condition]."""

    def __init__(self, dim: int, use_additional_t_cond: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(TIMESTEP_SINUSOID_DIM, dim)
        # Qwen-Image-Layered: an embedding of an integer flag in {0, 1} (its pipeline always passes 0, `is_rgb`).
        self.addition_t_embedding = nn.Embedding(2, dim) if use_additional_t_cond else None

    def forward(
        self, timestep: torch.Tensor, dtype: torch.dtype, additional_t_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Diffusers' Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000): [cos | sin] of 1000 sigma f.
        sinusoid = timestep_embedding(timestep, TIMESTEP_SINUSOID_DIM, scale=TIMESTEP_SCALE)  # (N, 256) float32
        cond = self.timestep_embedder(sinusoid.to(dtype))  # (N, D)
        if self.addition_t_embedding is not None:
            if additional_t_cond is None:
                raise ValueError("this Qwen-Image checkpoint (use_additional_t_cond) needs `additional_t_cond`")
            cond = cond + self.addition_t_embedding(additional_t_cond).to(dtype)
        return cond


#################################################################################
#                              Block building pieces                            #
#################################################################################


def _modulation(dim: int) -> nn.Sequential:
    """SiLU -> Linear: the six adaLN vectors (shift, scale, gate for attention, then for the MLP) of one stream."""
    # A Sequential so the key is `img_mod.1` / `txt_mod.1`, as in Diffusers' checkpoints.
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))


def _modulate(
    norm: LayerNormScaleShift, x: torch.Tensor, params: torch.Tensor, num_noisy_tokens: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalizes and modulates x (B, L, D) by params (B, 3 D) = (shift, scale, gate); returns it and the gate.

    zero_cond_t: params are (2 B, 3 D), rows B.. computed at timestep 0; tokens from num_noisy_tokens on (the
    reference images) take those, so that clean references are not treated as noise. The gate is then per token.
    """
    shift, scale, gate = params.chunk(3, dim=-1)  # (B or 2 B, D) each
    if num_noisy_tokens is None:
        return norm(x, shift, scale), gate[:, None]  # gate (B, 1, D)
    batch, length = x.shape[:2]
    (shift_t, shift_0), (scale_t, scale_0), (gate_t, gate_0) = (p.split(batch) for p in (shift, scale, gate))
    # LayerNorm is per token, so normalizing the two token groups apart equals normalizing them together.
    noisy, reference = x[:, :num_noisy_tokens], x[:, num_noisy_tokens:]
    modulated = torch.cat([norm(noisy, shift_t, scale_t), norm(reference, shift_0, scale_0)], dim=1)
    gates = torch.cat(
        [gate_t[:, None].expand(-1, num_noisy_tokens, -1), gate_0[:, None].expand(-1, length - num_noisy_tokens, -1)],
        dim=1,
    )  # (B, L, D)
    return modulated, gates


class JointAttention(nn.Module):
    """Attention over text + image tokens with qk-norm and rotary embeddings; separate weights per stream."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        inner_dim = num_heads * head_dim
        # Registration order follows Diffusers' so state-dict keys come out in the same order. Its RMSNorm rounds
        # to half precision before the weight, as RMSNormCastBeforeWeight does.
        self.norm_q = RMSNormCastBeforeWeight(head_dim, eps=EPS)
        self.norm_k = RMSNormCastBeforeWeight(head_dim, eps=EPS)
        self.to_q = ColumnParallelLinear(dim, inner_dim)
        self.to_k = ColumnParallelLinear(dim, inner_dim)
        self.to_v = ColumnParallelLinear(dim, inner_dim)
        self.add_k_proj = ColumnParallelLinear(dim, inner_dim)
        self.add_v_proj = ColumnParallelLinear(dim, inner_dim)
        self.add_q_proj = ColumnParallelLinear(dim, inner_dim)
        # A list so the key is `to_out.0`, as in Diffusers' checkpoints (its index 1 is a no-op dropout).
        self.to_out = nn.ModuleList([RowParallelLinear(inner_dim, dim)])
        self.to_add_out = RowParallelLinear(inner_dim, dim)
        self.norm_added_q = RMSNormCastBeforeWeight(head_dim, eps=EPS)
        self.norm_added_k = RMSNormCastBeforeWeight(head_dim, eps=EPS)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, freqs_cis: FreqsCis, attn_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: image (B, L, D); context: text (B, T, D); freqs_cis: (T + L, head_dim) each; attn_mask: (B, T + L)
        bool or None. Returns the projected image and text outputs."""
        # Text tokens first, matching the order of freqs_cis; each stream rotated as it is projected.
        text_freqs, image_freqs = split_rope(freqs_cis, context.shape[1])
        image_projections = (self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        image_qkv = project_qkv(x, *image_projections, self.head_dim, image_freqs)
        text_projections = (self.add_q_proj, self.add_k_proj, self.add_v_proj, self.norm_added_q, self.norm_added_k)
        text_qkv = project_qkv(context, *text_projections, self.head_dim, text_freqs)
        query, key, value = (torch.cat([t, i], dim=1) for t, i in zip(text_qkv, image_qkv, strict=True))
        out = attention(query, key, value, attn_mask).flatten(2)  # (B, T + L, inner)

        context_out, out = out.split([context.shape[1], x.shape[1]], dim=1)
        # The split halves are strided views; copying them first (as Diffusers does) keeps the kernel choice, and so
        # half-precision results, identical to Diffusers'.
        return self.to_out[0](out.contiguous()), self.to_add_out(context_out.contiguous())


#################################################################################
#                                Qwen-Image block                               #
#################################################################################


class QwenImageTransformerBlock(nn.Module):
    """Dual-stream block: image and text streams with their own weights, mixed only by a joint attention."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.img_mod = _modulation(dim)
        self.img_norm1 = LayerNormScaleShift(dim, eps=EPS)
        self.attn = JointAttention(dim, num_heads, head_dim)
        self.img_norm2 = LayerNormScaleShift(dim, eps=EPS)
        self.img_mlp = FeedForward(dim)
        self.txt_mod = _modulation(dim)
        self.txt_norm1 = LayerNormScaleShift(dim, eps=EPS)
        self.txt_norm2 = LayerNormScaleShift(dim, eps=EPS)
        self.txt_mlp = FeedForward(dim)

    def modulate_image(
        self, x: torch.Tensor, cond: torch.Tensor, num_noisy_tokens: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The joint attention's image input (x (B, L, D) normalized and modulated), its gate, and the MLP's
        modulation vectors (B or 2 B, 3 D); cond and num_noisy_tokens as in `forward`."""
        img_mod_attn, img_mod_mlp = self.img_mod(cond).chunk(2, dim=-1)  # (B or 2 B, 3 D) each
        x_norm, img_gate_attn = _modulate(self.img_norm1, x, img_mod_attn, num_noisy_tokens)
        return x_norm, img_gate_attn, img_mod_mlp

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        cond: torch.Tensor,
        freqs_cis: FreqsCis,
        attn_mask: torch.Tensor | None,
        num_noisy_tokens: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: image tokens (B, L, D); context: text tokens (B, T, D); cond: (B, D), or (2 B, D) under zero_cond_t
        (then the text takes the first B rows). Returns (x, context)."""
        x_norm, img_gate_attn, img_mod_mlp = self.modulate_image(x, cond, num_noisy_tokens)
        txt_mod_attn, txt_mod_mlp = self.txt_mod(cond[: context.shape[0]]).chunk(2, dim=-1)  # (B, 3 D) each
        c_norm, txt_gate_attn = _modulate(self.txt_norm1, context, txt_mod_attn, None)
        attn_out, context_attn_out = self.attn(x_norm, c_norm, freqs_cis, attn_mask)
        # Gated residuals.
        x = gated_residual(x, img_gate_attn, attn_out)
        context = gated_residual(context, txt_gate_attn, context_attn_out)

        x_norm, img_gate_mlp = _modulate(self.img_norm2, x, img_mod_mlp, num_noisy_tokens)
        x = gated_residual(x, img_gate_mlp, self.img_mlp(x_norm))
        c_norm, txt_gate_mlp = _modulate(self.txt_norm2, context, txt_mod_mlp, None)
        context = gated_residual(context, txt_gate_mlp, self.txt_mlp(c_norm))
        return clip_fp16(x), clip_fp16(context)


#################################################################################
#                                Qwen-Image model                               #
#################################################################################


@dataclasses.dataclass
class QwenImageStack(BlockStack):
    """Qwen-Image's state between blocks: streams = [image (B, L / N, D), text (B, T / N, D)]."""

    cond: torch.Tensor  # (B, D), or (2 B, D) under zero_cond_t (rows B.. at timestep 0)
    freqs_cis: FreqsCis  # this rank's text then image positions
    attn_mask: torch.Tensor | None  # (B, T / N + L / N) key mask; None unless the text is masked or a stream padded
    num_noisy_tokens: int | None  # zero_cond_t: how many of this rank's image tokens are noisy; None otherwise
    batch: int  # B: the final layer reads cond[:batch], the true timestep's


class QwenImageTransformer2DModel(BlockStackDiT):
    """The Qwen-Image transformer: packed latents, Qwen2.5-VL text embeddings and sigma -> velocity."""

    cache_family = "qwen-image"
    block_lists = ("transformer_blocks",)

    def __init__(self, config: QwenImageDitConfig):
        super().__init__()
        self.config = config
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        dim = heads * head_dim
        out_channels = config.out_channels or config.in_channels
        if sum(config.axes_dims_rope) != head_dim:
            raise ValueError(f"axes_dims_rope {config.axes_dims_rope} must sum to attention_head_dim {head_dim}")

        # Parameter-free: the pipeline calls it once per request (and text length) and passes (cos, sin) to every
        # step.
        self.rotary_emb = QwenImageRotaryEmbedding(config.axes_dims_rope, layer3d=config.use_layer3d_rope)
        self.time_text_embed = TimestepEmbedding(dim, config.use_additional_t_cond)
        self.txt_norm = RMSNormCastBeforeWeight(config.joint_attention_dim, eps=EPS)
        self.img_in = nn.Linear(config.in_channels, dim)
        self.txt_in = nn.Linear(config.joint_attention_dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [QwenImageTransformerBlock(dim, heads, head_dim) for _ in range(config.num_layers)]
        )
        self.norm_out = AdaLNContinuous(dim, eps=EPS)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * out_channels)

    @property
    def num_blocks(self) -> int:
        return len(self.transformer_blocks)

    def embed(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        freqs_cis: FreqsCis,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        img_shapes: Sequence[ImageShape] | None = None,
        additional_t_cond: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> QwenImageStack:
        """
        hidden_states: packed latents (B, L, in_channels), the noisy grid first, then any reference grids;
        encoder_hidden_states: Qwen2.5-VL hidden states (B, T, joint_attention_dim);
        timestep: sigma in [0, 1], (B,);
        freqs_cis: `self.rotary_emb(img_shapes, T)`, (cos, sin) of the T text then L image positions;
        encoder_hidden_states_mask: (B, T), nonzero for real text tokens; None (the pipelines' choice when every
            token is real) attends to all. Masked text tokens are hidden from every query, as in Diffusers;
        img_shapes: the (frames, rows, columns) grids of one sample, in sequence order; needed by zero_cond_t
            checkpoints only (the first grid is the noisy one);
        additional_t_cond: (B,) integers in {0, 1}, required by use_additional_t_cond checkpoints (Layered: 0);
        guidance: unsupported, must be None (no Qwen-Image checkpoint has a guidance embedder).
        The model's output is the predicted velocity (B, L, patch_size**2 * out_channels), reference-grid tokens
        included.
        """
        if guidance is not None:
            raise ValueError("Qwen-Image has no guidance embedding; pass guidance=None and use true CFG")
        batch, text_len = encoder_hidden_states.shape[:2]

        x = self.img_in(hidden_states)  # (B, L, D)
        timestep = timestep.to(x.dtype)
        num_noisy_tokens = None
        if self.config.zero_cond_t:
            if img_shapes is None:
                raise ValueError("this Qwen-Image checkpoint (zero_cond_t) needs `img_shapes`")
            frames, rows, cols = img_shapes[0]
            num_noisy_tokens = frames * rows * cols
            # A second conditioning at timestep 0, for the reference-image tokens.
            timestep = torch.cat([timestep, timestep * 0])
        cond = self.time_text_embed(timestep, x.dtype, additional_t_cond)  # (B, D), or (2 B, D)
        context = self.txt_in(self.txt_norm(encoder_hidden_states))  # (B, T, D)

        attn_mask = None
        if encoder_hidden_states_mask is not None:
            if encoder_hidden_states_mask.shape != (batch, text_len):
                raise ValueError(
                    f"encoder_hidden_states_mask has shape {tuple(encoder_hidden_states_mask.shape)}, "
                    f"expected (batch, text length) = {(batch, text_len)}"
                )
            image_keys = torch.ones(batch, x.shape[1], dtype=torch.bool, device=x.device)
            attn_mask = torch.cat([encoder_hidden_states_mask.bool(), image_keys], dim=1)  # (B, T + L)

        # Sequence parallelism: text and image tokens are both split across the SP group, each stream on its own
        # (padded where it does not divide), rather than the text replicated: every block is per-token but for the
        # joint attention, which then needs no notion of streams, and the text's MLPs split too. The text mask is
        # split with its tokens and the padding added to it. At SP size 1 nothing moves.
        shards = (SequenceShard.of(text_len), SequenceShard.of(x.shape[1]))  # text first, as freqs_cis and the mask
        context, x = shards[0].split(context), shards[1].split(x)  # (B, T / N, D), (B, L / N, D)
        freqs_cis = tuple(split_streams(table, shards, dim=0) for table in freqs_cis)
        attn_mask = streams_key_mask(shards, batch, x.device, attn_mask)  # None unless masked or padded
        if num_noisy_tokens is not None:
            # The noisy tokens are a prefix of the image, so they are a prefix of each rank's contiguous shard too.
            num_noisy_tokens = min(max(num_noisy_tokens - shards[1].start, 0), x.shape[1])
        return QwenImageStack([x, context], shards[1], cond, freqs_cis, attn_mask, num_noisy_tokens, batch)

    def run_blocks(self, stack: QwenImageStack, start: int, end: int) -> None:
        x, context = stack.streams
        for block in self.transformer_blocks[start:end]:
            x, context = block(x, context, stack.cond, stack.freqs_cis, stack.attn_mask, stack.num_noisy_tokens)
        stack.streams = [x, context]

    def finish(self, stack: QwenImageStack) -> torch.Tensor:
        # The output is read at the conditioning of the true timestep.
        out = self.proj_out(self.norm_out(stack.streams[0], stack.cond[: stack.batch]))  # (B, L / N, out_channels)
        return stack.shard.gather(out)  # the whole image from every rank's part, once, at the narrowest width

    def modulated_input(self, stack: QwenImageStack) -> torch.Tensor:
        return self.transformer_blocks[0].modulate_image(stack.streams[0], stack.cond, stack.num_noisy_tokens)[0]


EntryClass = QwenImageTransformer2DModel
