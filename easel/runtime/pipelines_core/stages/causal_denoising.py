"""`CausalDMDDenoisingStage`: block-causal few-step video, one block of latent frames after another.

Each block runs the DMD step list (`dmd_step`) while its tokens attend to the cached keys and values of the blocks
before it; once a block is done, one more forward over its clean latents, at the config's context timestep, records
its keys and values in the cache (the last block's would serve nothing and is skipped). An input image is the first
latent frame: it is only recorded. A finished block goes to the request's `block_callback` at once, so its frames
can be decoded and shown while later blocks are made. The loop is `DenoisingStage`'s: a forward is a step.
"""

import torch

from easel.errors import InvalidInputError
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.dmd_denoising import DmdDenoisingStage, DmdRun, renoised
from easel.runtime.server_args import ServerArgs


class CausalDMDDenoisingStage(DmdDenoisingStage):
    """Denoises frame blocks in order over a KV cache of the finished ones (the DiT must offer `new_kv_cache`)."""

    makes_frame_blocks = True

    def new_run(self, batch: Req, server_args: ServerArgs) -> "CausalDMDRun":
        return CausalDMDRun(self, batch, server_args)


class CausalDMDRun(DmdRun):
    """One request's block-causal loop: its frame blocks, its KV cache, and the plan of its forwards."""

    def __init__(self, stage: CausalDMDDenoisingStage, batch: Req, server_args: ServerArgs):
        super().__init__(stage, batch, server_args)
        if self.step_cache is not None:
            raise InvalidInputError(
                "step caching does not apply to block-causal generation (each block runs a few steps, on its own "
                "inputs): drop the cache option"
            )

    def begin_schedule(self) -> int:
        super().begin_schedule()
        batch, config = self.batch, self.config
        frames = batch.raw_latent_shape[2]
        self.tokens_per_frame = self.freqs_cis[0].shape[0] // frames  # the rotary rows run frame by frame
        self.blocks: list[tuple[int, int]] = []  # (first latent frame, frames)
        for size in config.frame_blocks(frames, batch):
            self.blocks.append((sum(self.blocks[-1]) if self.blocks else 0, size))
        window = config.attention_window(self.tokens_per_frame)
        self.kv_cache = self.stage.transformer.new_kv_cache(window)
        steps = len(batch.timesteps)
        # The plan: (block, DMD step) per forward; step None records the block's clean latents in the cache.
        self.plan: list[tuple[int, int | None]] = []
        self.first_denoised = 0
        if batch.image_latents:
            self.latents[:, :, :1] = batch.image_latents[0]
            self.plan.append((0, None))
            self.first_denoised = 1
        for block in range(self.first_denoised, len(self.blocks)):
            self.plan += [(block, step) for step in range(steps)]
            if block < len(self.blocks) - 1:
                self.plan.append((block, None))
        return len(self.plan)

    def block_frames(self, block: int) -> slice:
        start, size = self.blocks[block]
        return slice(start, start + size)

    def passes(self) -> list[dict]:
        batch, config = self.batch, self.config
        block, step = self.plan[self.step]
        frames = self.block_frames(block)
        self.x = self.latents[:, :, frames].to(self.dtype)
        t = batch.timesteps[step] if step is not None else torch.tensor(config.context_timestep)
        rows = slice(frames.start * self.tokens_per_frame, frames.stop * self.tokens_per_frame)
        freqs_cis = tuple(table[rows] for table in self.freqs_cis)
        kwargs = config.prepare_pos_cond_kwargs(batch, self.x, t.to(self.x.device), freqs_cis=freqs_cis)
        self.kv_cache.record(step is None)
        return [{**kwargs, "kv_cache": self.kv_cache}]

    def advance(self, predictions: list[torch.Tensor]) -> None:
        batch = self.batch
        block, step = self.plan[self.step]
        frames = self.block_frames(block)
        x0 = None  # a recording forward's output is not needed
        if step is not None:  # a DMD step, written into the block's latents
            x0 = self.latents[:, :, frames] - batch.sigmas[step] * predictions[0].float()
            self.latents[:, :, frames] = renoised(x0, batch.sigmas[step + 1], batch.generator)
        finished = step == len(batch.timesteps) - 1 or block < self.first_denoised
        if finished and batch.block_callback is not None:
            batch.block_callback(self.latents[:, :, frames])
        self.step += 1
        self.report(lambda: self.predicted_video(frames, x0))

    def predicted_video(self, frames: slice, x0: torch.Tensor | None) -> torch.Tensor:
        """The video so far with the current block as its step predicts it clean (the latents as they are after a
        recording forward)."""
        video = self.latents.clone()
        if x0 is not None:
            video[:, :, frames] = x0
        return video
