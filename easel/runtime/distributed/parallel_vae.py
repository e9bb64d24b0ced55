"""The VAE decode spread over every rank of a parallel run: the latent's rows split across the "world" group.

After denoising every rank holds the same final latents; decoding them on one rank while the others wait leaves
most of the hardware idle at the most memory-hungry step. Here rank i decodes its own consecutive block of latent
rows (uneven splits are fine) and the pixel rows are all-gathered at the end, so every rank returns the full image.

The result equals the single-process decode because, for the duration of the decode, the decoder modules that look
beyond a pixel run a parallel forward (an instance attribute that shadows the class's, removed afterwards):

- convolutions (`nn.Conv2d`, Wan's / Qwen-Image's causal `Conv3d`) spanning more than one row get halo rows from
  the neighbouring ranks, so each sees exactly the inputs it would in one process; zero padding only at the true
  top and bottom of the image;
- `nn.GroupNorm` combines every rank's per-group count, mean and centred sum of squares (Chan's formula, exact and
  free of the cancellation of a plain sum of squares), so it normalises with the whole image's statistics;
- self-attention over all spatial positions (AutoencoderKL's mid-block `Attention`, Wan's / Qwen-Image's per-frame
  attention block) keeps its local queries and attends over keys and values gathered from every rank.

Everything else is per pixel or per row and runs on the local rows as it is: Wan's RMS norms (over channels),
nearest upsampling (each row becomes two), Wan's time upsampling and per-frame feature cache (each rank caches its
own rows), Wan2.2's patch and duplicate-up shortcuts. diffusers' own decode loop runs unchanged.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Collection, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from easel.runtime.distributed.communication import all_gather
from easel.runtime.distributed.parallel_state import get_group, get_group_rank, get_group_ranks, get_group_size

GROUP = "world"
# What a test may leave out (`decode(..., _skip=...)`) to show that each part is needed.
PARTS = ("halo", "norm", "attention")


@dataclasses.dataclass(frozen=True)
class RowSplit:
    """How the latent's rows are dealt out: rank i holds `counts[i]` consecutive rows, ranks in order."""

    counts: tuple[int, ...]
    rank: int

    @classmethod
    def of(cls, rows: int, size: int, rank: int) -> "RowSplit":
        """`rows` over `size` ranks, the first `rows % size` ranks one row more."""
        base, extra = divmod(rows, size)
        return cls(tuple(base + (i < extra) for i in range(size)), rank)

    @property
    def size(self) -> int:
        return len(self.counts)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of x (rows along dim -2)."""
        start = sum(self.counts[: self.rank])
        return x.narrow(-2, start, self.counts[self.rank])

    def counts_at(self, local: int) -> list[int]:
        """Every rank's extent of a dimension that is `local` here and scales with the latent rows (the rows at a
        finer resolution, or rows x width tokens)."""
        scale, rest = divmod(local, self.counts[self.rank])
        if rest:
            raise ValueError(f"{local} does not scale from this rank's {self.counts[self.rank]} latent rows")
        return [count * scale for count in self.counts]


def decode(vae: nn.Module, latents: torch.Tensor, *, _skip: Collection[str] = ()) -> torch.Tensor:
    """`vae.decode(latents, return_dict=False)[0]`, with the rows of latents (B, C, [T,] H, W) split across the
    world's ranks when there are several; every rank returns the whole decoded image or video.

    `_skip` is for tests only: the parts of `PARTS` to leave out, which makes the result wrong.
    """
    size = get_group_size(GROUP)
    if size == 1:
        return vae.decode(latents, return_dict=False)[0]
    # Tiling already bounds the memory its own way and blends overlapping tiles, which a row split would cut
    # through; and fewer latent rows than ranks leaves some rank nothing. Then every rank decodes it all.
    if getattr(vae, "use_tiling", False) or latents.shape[-2] < size:
        return vae.decode(latents, return_dict=False)[0]
    split = RowSplit.of(latents.shape[-2], size, get_group_rank(GROUP))
    forwards = _parallel_forwards(vae, split, frozenset(_skip))
    if forwards is None:  # a module the split cannot serve: the whole decode on every rank, right if not faster
        return vae.decode(latents, return_dict=False)[0]
    with _swapped_forwards(forwards):
        local = vae.decode(split.local(latents), return_dict=False)[0]  # (B, C, [T,] h, W)
    return _gather_rows(local, split.counts_at(local.shape[-2]), dim=-2)


def _parallel_forwards(vae: nn.Module, split: RowSplit, skip: frozenset[str]) -> dict[nn.Module, Callable] | None:
    """The parallel forward of each decoder module that needs one; None if some module cannot be split by rows."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageAttentionBlock, QwenImageCausalConv3d
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanCausalConv3d

    decoder = getattr(vae, "decoder", None)
    if not isinstance(decoder, nn.Module):
        return None
    exchange = "halo" not in skip
    forwards: dict[nn.Module, Callable] = {}
    parts = [part for part in (getattr(vae, "post_quant_conv", None), decoder) if isinstance(part, nn.Module)]
    for module in (module for part in parts for module in part.modules()):
        if isinstance(module, nn.GroupNorm):
            if "norm" not in skip:
                forwards[module] = _group_norm_forward(module)
        elif isinstance(module, WanAttentionBlock | QwenImageAttentionBlock):
            if "attention" not in skip:
                forwards[module] = _frame_attention_forward(module, split)
        elif isinstance(module, Attention):
            if module.is_cross_attention or getattr(module, "fused_projections", False):
                return None
            if "attention" not in skip:
                # The processor projects every local token; gathering the key and value projections makes it
                # attend the local queries over the whole image, whichever processor it is.
                forwards[module.to_k] = _gathering_linear_forward(module.to_k, split)
                forwards[module.to_v] = _gathering_linear_forward(module.to_v, split)
        elif isinstance(module, WanCausalConv3d | QwenImageCausalConv3d | nn.Conv2d):
            causal = not isinstance(module, nn.Conv2d)
            row = 1 if causal else 0  # the kernel's row axis
            if module.padding_mode != "zeros" or isinstance(module.padding, str) or module.stride[row] != 1:
                return None
            top = module._padding[2] if causal else module.padding[0]  # the causal ones pad by hand (_padding)
            halo = (top, module.dilation[row] * (module.kernel_size[row] - 1) - top)  # rows (above, below)
            # A rank must hold a whole halo for its neighbours; decoders only add rows, so the latent's suffice.
            if max(halo) > min(split.counts):
                return None
            if max(halo) > 0:
                make = _causal_conv3d_forward if causal else _conv2d_forward
                forwards[module] = make(module, halo, split, exchange)
        elif isinstance(module, nn.modules.conv._ConvNd) and len(module.kernel_size) > 1 and module.kernel_size[-2] > 1:
            return None  # another convolution across rows (transposed, plain 3D): not split here
    return forwards


@contextlib.contextmanager
def _swapped_forwards(forwards: dict[nn.Module, Callable]) -> Iterator[None]:
    """Each module runs its given forward inside the block, and whatever it ran before afterwards."""
    # An instance attribute shadows the class's forward; one already there (a hook's) is put back after.
    saved = {module: module.__dict__.get("forward") for module in forwards}
    for module, forward in forwards.items():
        module.forward = forward
    try:
        yield
    finally:
        for module, previous in saved.items():
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _gather_rows(x: torch.Tensor, counts: list[int], dim: int) -> torch.Tensor:
    """Every rank's x concatenated along dim in rank order, where rank i's has counts[i] there (the rest equal)."""
    dim = dim % x.dim()
    longest = max(counts)
    # all_gather needs equal shapes: pad every rank's block to the longest, then cut each back to its own.
    padded = x.new_zeros((*x.shape[:dim], longest, *x.shape[dim + 1 :]))
    padded.narrow(dim, 0, x.shape[dim]).copy_(x)
    blocks = all_gather(padded, GROUP, dim).split(longest, dim)
    return torch.cat([block.narrow(dim, 0, count) for block, count in zip(blocks, counts, strict=True)], dim)


def _with_halo(x: torch.Tensor, top: int, bottom: int, split: RowSplit, exchange: bool = True) -> torch.Tensor:
    """x (rows along dim -2) with the last `top` rows of the rank above before it and the first `bottom` rows of
    the rank below after it; zero rows where there is no such rank, as the convolution pads the image's edge."""
    rows = x.shape[-2]
    if rows < max(top, bottom):
        raise ValueError(f"a halo of {max(top, bottom)} rows needs at least as many local rows, not {rows}")
    above = x.new_zeros((*x.shape[:-2], top, x.shape[-1]))
    below = x.new_zeros((*x.shape[:-2], bottom, x.shape[-1]))
    ranks, group, rank = get_group_ranks(GROUP), get_group(GROUP), split.rank
    ops = []
    if exchange and rank > 0:
        if top:
            ops.append(dist.P2POp(dist.irecv, above, ranks[rank - 1], group))
        if bottom:
            ops.append(dist.P2POp(dist.isend, x.narrow(-2, 0, bottom).contiguous(), ranks[rank - 1], group))
    if exchange and rank < split.size - 1:
        if bottom:
            ops.append(dist.P2POp(dist.irecv, below, ranks[rank + 1], group))
        if top:
            ops.append(dist.P2POp(dist.isend, x.narrow(-2, rows - top, top).contiguous(), ranks[rank + 1], group))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    return torch.cat([above, x, below], dim=-2)


def _conv2d_forward(conv: nn.Conv2d, halo: tuple[int, int], split: RowSplit, exchange: bool) -> Callable:
    """conv's forward on local rows: the row padding replaced by the neighbours' rows (`halo` above, below)."""
    top, bottom = halo

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = _with_halo(x, top, bottom, split, exchange)  # (N, C, top + h + bottom, W)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups)

    return forward


def _causal_conv3d_forward(conv: nn.Conv3d, halo: tuple[int, int], split: RowSplit, exchange: bool) -> Callable:
    """A Wan-style causal Conv3d's forward on local rows: its cached frames and time padding as before, then the
    neighbours' rows (with their own cached frames, `halo` above, below) in place of the row padding."""
    pad_w, _, _, _, pad_t, _ = conv._padding  # F.pad order: W left/right, H top/bottom, T front/back
    top, bottom = halo

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        front = pad_t
        if cache_x is not None and pad_t > 0:  # the previous chunk's last frames stand in for the causal padding
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            front -= cache_x.shape[2]
        x = F.pad(x, (pad_w, pad_w, 0, 0, front, 0))  # (B, C, T', h, W')
        x = _with_halo(x, top, bottom, split, exchange)  # (B, C, T', top + h + bottom, W')
        return F.conv3d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


def _group_norm_forward(norm: nn.GroupNorm) -> Callable:
    """norm's forward with each group's statistics taken over every rank's rows (float32, float64 to combine)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        groups = x.float().reshape(batch, norm.num_groups, -1)  # (B, G, C / G x local positions)
        mean = groups.mean(-1)  # (B, G)
        m2 = (groups - mean[..., None]).square().sum(-1)  # (B, G)
        count = torch.full_like(mean, groups.shape[-1], dtype=torch.float64)  # exact beyond float32's 2**24
        stats = torch.stack([count, mean.double(), m2.double()], dim=-1)  # (B, G, 3)
        counts, means, m2s = all_gather(stats[None], GROUP, dim=0).unbind(-1)  # (world, B, G) each
        total = counts.sum(0)
        whole_mean = (counts * means).sum(0) / total
        whole_var = (m2s + counts * (means - whole_mean).square()).sum(0) / total  # biased, as GroupNorm's
        inv_std = torch.rsqrt(whole_var + norm.eps).float()
        out = ((groups - whole_mean.float()[..., None]) * inv_std[..., None]).reshape(x.shape)
        if norm.affine:
            shape = (1, channels) + (1,) * (x.dim() - 2)
            out = out * norm.weight.float().view(shape) + norm.bias.float().view(shape)
        return out.to(x.dtype)

    return forward


def _gathering_linear_forward(linear: nn.Linear, split: RowSplit) -> Callable:
    """linear's forward on local tokens (B, N, C), its output gathered over every rank's tokens (B, N_all, C')."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, linear.weight, linear.bias)  # (B, h W, C')
        return _gather_rows(out, split.counts_at(out.shape[1]), dim=1)

    return forward


def _frame_attention_forward(block: nn.Module, split: RowSplit) -> Callable:
    """Wan's / Qwen-Image's single-head attention over each frame's positions: local queries, keys and values of
    every rank's rows (the same steps as its own forward otherwise)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        batch, channels, time, height, width = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(batch * time, channels, height, width)
        qkv = block.to_qkv(block.norm(frames))  # (BT, 3C, h, W); the norm is over channels, per pixel
        qkv = qkv.reshape(batch * time, 1, channels * 3, height * width).permute(0, 1, 3, 2)  # (BT, 1, h W, 3C)
        q, kv = qkv[..., :channels], qkv[..., channels:]
        kv = _gather_rows(kv, split.counts_at(height * width), dim=2)  # (BT, 1, H W, 2C)
        k, v = kv.chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())  # (BT, 1, h W, C)
        out = out.squeeze(1).permute(0, 2, 1).reshape(batch * time, channels, height, width)
        out = block.proj(out).view(batch, time, channels, height, width).permute(0, 2, 1, 3, 4)
        return out + x

    return forward
