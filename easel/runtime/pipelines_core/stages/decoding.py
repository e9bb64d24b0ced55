"""`DecodingStage`: latents to pixels through the VAE, shared by every model."""

import dataclasses

import torch

from easel.errors import InvalidInputError
from easel.runtime.distributed.parallel_vae import decode
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs


class DecodingStage(PipelineStage):
    """Unpacks and denormalizes the latents, decodes them, and maps the pixels from [-1, 1] to [0, 1]."""

    input_fields = ("latents", "raw_latent_shape")
    output_fields = ("output",)

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae

    shares_work_across_requests = True

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        return self.forward_many([batch], server_args)[0]

    def forward_many(self, batches: list[Req], server_args: ServerArgs) -> list[Req]:
        """Decodes the latents of requests of one shape in one VAE call."""
        groups: dict[tuple, list[tuple[Req, torch.Tensor]]] = {}
        for batch in batches:
            if batch.output_type == "latent":
                batch.output = batch.latents
                continue
            latents = self._vae_input(batch, server_args)
            groups.setdefault(tuple(latents.shape[1:]), []).append((batch, latents))
        for group in groups.values():
            stacked = group[0][1] if len(group) == 1 else torch.cat([latents for _, latents in group])
            images = self._decode(stacked)
            for (batch, _), image in zip(group, images.split([len(latents) for _, latents in group]), strict=True):
                batch.output = image
        return batches

    def _vae_input(self, batch: Req, server_args: ServerArgs) -> torch.Tensor:
        """The request's latents unpacked and denormalized, as the VAE decodes them."""
        config = server_args.pipeline_config
        latents = config.unpack_latents(batch.latents, batch)
        # Per-channel statistics come as tensors (on the CPU): on the latents' device, they scale them there.
        scale, shift = (v.to(latents.device) if torch.is_tensor(v) else v for v in config.get_decode_scale_and_shift())
        latents = latents / scale
        if shift is not None:
            latents = latents + shift
        vae_param = next(self.vae.parameters())
        return latents.to(vae_param.device, vae_param.dtype)

    def block_decoder(self, batch: Req, server_args: ServerArgs) -> "BlockDecoder":
        """A decoder of the request's latent frames a block at a time, in order (streaming a block-causal video)."""
        return BlockDecoder(self, batch, server_args)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        image = decode(self.vae, latents)
        if image.dim() == 5 and image.shape[2] == 1:  # a video VAE decoding a still image: drop the frame axis
            image = image[:, :, 0]
        return to_unit_range(image)  # (B, C, H, W)


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """The VAE's pixels in [-1, 1] mapped to [0, 1]."""
    return (image.float() / 2 + 0.5).clamp(0, 1)


class BlockDecoder:
    """Decodes a video's latent frames block after block, so that the blocks' frames joined are the whole video's.

    Wan's VAE is causal in time: it decodes a latent frame at a time, carrying a feature cache of the frames before.
    This decoder carries its own such cache from block to block (the VAE may decode other requests in between),
    which is what `AutoencoderKLWan.decode` does within one call. A block is small, so it is never tiled.
    """

    def __init__(self, stage: DecodingStage, batch: Req, server_args: ServerArgs):
        vae = stage.vae
        conv_counts = getattr(vae, "_cached_conv_counts", None)  # AutoencoderKLWan's causal convolutions
        if conv_counts is None or getattr(vae.config, "patch_size", None) is not None:
            raise InvalidInputError(f"{type(vae).__name__} cannot decode a video block by block; use generate")
        self.stage, self.batch, self.server_args = stage, batch, server_args
        self.feature_cache: list = [None] * conv_counts["decoder"]
        self.frames_done = 0  # the video frames decoded so far

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The next block's frames: latents (B, C, f, h, w) -> pixels (B, 3, frames, H, W) in [0, 1]."""
        vae = self.stage.vae
        z = self.stage._vae_input(dataclasses.replace(self.batch, latents=latents), self.server_args)
        x = vae.post_quant_conv(z)  # a 1x1x1 convolution: frame by frame
        frames = []
        for i in range(x.shape[2]):
            # feat_idx counts the decoder's causal convolutions through one frame; the first frame of the video
            # (first_chunk) is decoded to one frame, each later one to the VAE's temporal compression.
            frame = x[:, :, i : i + 1]
            first_chunk = self.frames_done == 0 and i == 0
            frames.append(vae.decoder(frame, feat_cache=self.feature_cache, feat_idx=[0], first_chunk=first_chunk))
        pixels = torch.cat(frames, dim=2)
        self.frames_done += pixels.shape[2]
        return to_unit_range(pixels.clamp(-1, 1))
