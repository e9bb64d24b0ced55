"""`DecodingStage`: latents to pixels through the VAE, shared by every model."""

import torch

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

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        image = decode(self.vae, latents)
        if image.dim() == 5 and image.shape[2] == 1:  # a video VAE decoding a still image: drop the frame axis
            image = image[:, :, 0]
        return (image.float() / 2 + 0.5).clamp(0, 1)  # (B, C, H, W)
