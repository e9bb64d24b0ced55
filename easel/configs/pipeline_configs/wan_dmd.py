"""Few-step distilled Wan: DMD (FastVideo's FastWan) and block-causal self-forcing Wan, on Wan's own weights.

A DMD model denoises with a fixed list of timesteps and no CFG: each step's flow prediction gives the clean latents,
which are noised again, with fresh noise, to the next timestep of the list (`DmdDenoisingStage`). A self-forcing
model does the same a block of latent frames at a time, each block attending to the finished ones
(`CausalDMDDenoisingStage`).

What is assumed of the checkpoints, which Easel has not seen (no network here), from FastVideo's configs of them:
- FastWan2.1-T2V-1.3B-Diffusers and FastWan2.2-TI2V-5B-Diffusers: `model_index.json` names `WanDMDPipeline` over a
  Diffusers Wan folder (UMT5, `WanTransformer3DModel`, `AutoencoderKLWan`, a UniPC scheduler DMD does not use);
  steps [1000, 757, 522]. Each listed timestep's sigma is read off the 1000-step flow-matching table shifted by 8,
  which FastVideo's DMD stage builds for every FastWan whatever the model's shift (the nearest entry: the timestep
  itself over 1000, to within 0.0005).
- SFWan2.1-T2V-1.3B-Diffusers (self-forcing): `WanCausalDMDPipeline`, its transformer `CausalWanTransformer3DModel`
  with Wan2.1-1.3B's config and Diffusers' key names; blocks of 3 latent frames, no sliding window; steps
  [1000, 750, 500, 250] warped through the table shifted by 5 (step t becomes the table's (1000 - t)-th timestep,
  so [1000, 937.5, 833.3, 625]); a finished block's cache written at timestep 0.
Any of these settings can be given in `model_index.json` under the field's name, as Wan2.2's `boundary_ratio` is.
"""

import dataclasses
import logging

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from easel.configs.pipeline_configs.wan import NUM_TRAIN_TIMESTEPS, WanPipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)


def dmd_schedule(steps: tuple[int, ...], shift: float, warp: bool) -> tuple[torch.Tensor, list[float]]:
    """The timesteps a DMD step list gives the DiT, and their sigmas (then a final 0), from the 1000-step
    flow-matching table shifted by `shift`: each timestep's sigma is the table's at its nearest timestep; `warp`
    first maps step t to the table's (1000 - t)-th timestep (0 past its end)."""
    # Diffusers' flow-matching scheduler builds exactly that table when constructed (before any set_timesteps).
    table = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    table_sigmas, table_timesteps = table.sigmas, table.timesteps  # (1000,) each, from 1 / 1000 down
    timesteps = torch.tensor(steps, dtype=torch.float32)
    if warp:
        timesteps = torch.cat([table_timesteps, torch.zeros(1)])[NUM_TRAIN_TIMESTEPS - timesteps.long()]
    nearest = (table_timesteps[None, :] - timesteps[:, None]).abs().argmin(dim=1)
    return timesteps, [*table_sigmas[nearest].tolist(), 0.0]


@dataclasses.dataclass
class WanDMDPipelineConfig(WanPipelineConfig):
    """FastWan: Wan with a fixed DMD step list and no classifier-free guidance."""

    dmd_denoising_steps: tuple[int, ...] = (1000, 757, 522)
    flow_shift: float = 8.0
    warp_denoising_step: bool = False

    def cfg_scale(self, batch: Req) -> float | None:
        return None  # distilled: one pass a step

    def dmd_schedule(self) -> tuple[torch.Tensor, list[float]]:
        """The DiT's timesteps and their sigmas (`dmd_schedule`) for this model's step list."""
        return dmd_schedule(tuple(self.dmd_denoising_steps), self.flow_shift, self.warp_denoising_step)

    def prepare_request(self, batch: Req) -> None:
        super().prepare_request(batch)
        steps = len(self.dmd_denoising_steps)
        if batch.num_inference_steps != steps:
            logger.warning(
                "this DMD model runs its fixed %d steps %s: num_inference_steps %d does not apply",
                steps,
                list(self.dmd_denoising_steps),
                batch.num_inference_steps,
            )
        batch.num_inference_steps = steps


@dataclasses.dataclass
class FastWan22PipelineConfig(WanDMDPipelineConfig):
    """FastWan2.2-TI2V-5B: Wan2.2-TI2V's per-token timesteps (an optional input image as the clean first frame)."""

    expand_timesteps: bool = True


@dataclasses.dataclass
class WanCausalDMDPipelineConfig(WanDMDPipelineConfig):
    """Self-forcing Wan: the latent frames made in blocks of `num_frames_per_block`, each attending to the blocks
    before it (through a KV cache), at most the latest `local_attn_size` frames (-1: all); an input image, or with
    `independent_first_frame` a first frame of its own, makes the first latent frame a block alone."""

    dmd_denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    flow_shift: float = 5.0
    warp_denoising_step: bool = True
    num_frames_per_block: int = 3
    local_attn_size: int = -1
    independent_first_frame: bool = False
    context_timestep: float = 0.0  # the timestep a finished block's clean latents are cached at

    def input_image_range(self) -> tuple[int, int]:
        return 0, 1  # image-to-video: the image is the first latent frame, cached before the first block

    def prepare_request(self, batch: Req) -> None:
        """Fits the frame count to whole blocks: the latent frames after a lone first one (an input image, or an
        independent first frame) divide into blocks; down to the nearest such count (up to one block at least)."""
        super().prepare_request(batch)
        step, per_block = self.vae_config.temporal_compression, self.num_frames_per_block
        latent_frames = (batch.num_frames - 1) // step + 1
        lone = int(self.has_lone_first_frame(batch))
        fitted = lone + max(1, (latent_frames - lone) // per_block) * per_block
        if fitted != latent_frames:
            frames = (fitted - 1) * step + 1
            logger.warning(
                "%d frames are not whole blocks of %d latent frames (%d video frames each): adjusted to %d",
                batch.num_frames,
                per_block,
                per_block * step,
                frames,
            )
            batch.num_frames = frames

    def has_lone_first_frame(self, batch: Req) -> bool:
        return self.independent_first_frame or bool(batch.condition_images)

    def frame_blocks(self, latent_frames: int, batch: Req) -> list[int]:
        """The sizes of the frame blocks made one after another, in latent frames (a lone first frame is one)."""
        lone = int(self.has_lone_first_frame(batch))
        return [1] * lone + [self.num_frames_per_block] * ((latent_frames - lone) // self.num_frames_per_block)

    def attention_window(self, tokens_per_frame: int) -> int | None:
        """The most tokens a query attends to (its own block's included), or None for every earlier one."""
        return None if self.local_attn_size == -1 else self.local_attn_size * tokens_per_frame
