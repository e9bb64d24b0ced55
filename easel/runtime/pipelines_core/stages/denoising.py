"""`DenoisingStage`: the sampling loop every model shares. Model differences live in PipelineConfig callbacks.

The loop is a `DenoisingRun`, one request's state stepped once per timestep: the stage runs it to the end, and the
server's batching scheduler interleaves the runs of several requests, a step each, over shared DiT forwards.
"""

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from easel.runtime.cache.spec import parse_cache_spec
from easel.runtime.cache.step_cache import StepCache
from easel.runtime.distributed.cfg_parallel import run_passes
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs

# The conditioning tensors, cast to the DiT's dtype once per request rather than in every step.
CONDITIONING_FIELDS = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_embeds",
    "neg_pooled_embeds",
    "image_latents",
    "image_embeds",
)


class DenoisingStage(PipelineStage):
    """Runs the DiT once per step (twice under classifier-free guidance) and lets the scheduler step."""

    input_fields = (
        "latents",
        "timesteps",
        "num_inference_steps",
        "sigmas",
        "prompt_embeds",
        "raw_latent_shape",
    )
    output_fields = ("latents",)
    # True where the video's latents are finished a block of frames at a time, each handed to Req.block_callback.
    makes_frame_blocks = False

    def __init__(self, transformer: torch.nn.Module, scheduler, transformer_2: torch.nn.Module | None = None):
        self.transformer = transformer
        self.scheduler = scheduler
        # Mixture-of-experts pipelines (Wan2.2-A14B) hand later, low-noise steps to a second DiT.
        self.experts = [transformer] if transformer_2 is None else [transformer, transformer_2]

    def verify_input(self, batch: Req, server_args: ServerArgs) -> list[str]:
        missing = super().verify_input(batch, server_args)
        if batch.do_classifier_free_guidance and not batch.negative_prompt_embeds:
            missing.append("negative_prompt_embeds")
        return missing

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        run = self.new_run(batch, server_args)
        for _ in tqdm(range(run.total), desc="denoising", disable=not server_args.progress_bar):
            run.advance(run_passes(run.predict, run.passes()))
        return run.finish()

    def begin(self, batch: Req, server_args: ServerArgs) -> "DenoisingRun":
        """The request's loop, to be stepped by the caller."""
        self.check_input(batch, server_args)
        return self.new_run(batch, server_args)

    def new_run(self, batch: Req, server_args: ServerArgs) -> "DenoisingRun":
        """The loop this stage runs (a specialized stage's own kind of run)."""
        return DenoisingRun(self, batch, server_args)


class DenoisingRun:
    """One request's denoising loop: its latents, scheduler, step index and cache, advanced a step at a time."""

    def __init__(self, stage: DenoisingStage, batch: Req, server_args: ServerArgs):
        self.stage, self.batch = stage, batch
        self.config = server_args.pipeline_config
        self.dtype = next(stage.transformer.parameters()).dtype
        for field in CONDITIONING_FIELDS:
            setattr(batch, field, [e.to(self.dtype) for e in getattr(batch, field)])
        rotary_emb = getattr(stage.transformer, "rotary_emb", None)
        self.freqs_cis = self.config.get_freqs_cis(batch, batch.latents.device, rotary_emb, self.dtype)
        self.latents = batch.latents
        self.total = self.begin_schedule()
        self.step = 0
        spec = parse_cache_spec(batch.cache if batch.cache is not None else server_args.cache)
        # Per request: the cache's state is this loop's and goes with it.
        self.step_cache = StepCache(spec, stage.experts, self.total) if spec.enabled else None
        self.cache_spec = spec
        self.started = time.perf_counter()
        # This step's choices, set by `passes` and read by `predict` and `advance`.
        self.expert, self.cfg_scale, self.x, self.has_extra = 0, 1.0, self.latents, False

    def begin_schedule(self) -> int:
        """Readies the schedule and returns the number of steps (DiT forwards) the loop takes."""
        # The request's own scheduler where its timestep preparation made one (requests stepped together each
        # step theirs); else the stage's.
        self.scheduler = self.batch.scheduler if self.batch.scheduler is not None else self.stage.scheduler
        self.scheduler.set_begin_index(0)  # the scheduler then never searches its timesteps (a host sync)
        return len(self.batch.timesteps)

    @property
    def done(self) -> bool:
        return self.step == self.total

    @property
    def transformer(self) -> torch.nn.Module:
        """The DiT of this step (set by `passes`)."""
        return self.stage.experts[self.expert]

    def passes(self) -> list[dict[str, Any]]:
        """The DiT kwargs of this step's passes: the conditional one, CFG's unconditional one, any extra pass."""
        batch, config, step = self.batch, self.config, self.step
        t = batch.timesteps[step]
        self.expert, self.cfg_scale = config.select_expert(batch, t)
        x = self.x = self.latents.to(self.dtype)
        passes = {"cond": config.prepare_pos_cond_kwargs(batch, x, t, freqs_cis=self.freqs_cis)}
        if batch.do_classifier_free_guidance:
            passes["uncond"] = config.prepare_neg_cond_kwargs(batch, x, t, freqs_cis=self.freqs_cis)
        extra_kwargs = config.prepare_extra_pass_kwargs(batch, x, t, step, freqs_cis=self.freqs_cis)
        self.has_extra = extra_kwargs is not None
        if extra_kwargs is not None:
            passes["extra"] = extra_kwargs
        if self.step_cache is not None:
            self.step_cache.attach(passes, step, self.expert if len(self.stage.experts) > 1 else None)
        return list(passes.values())

    def predict(self, kwargs: dict[str, Any]) -> torch.Tensor:
        """One pass of this step through its DiT, alone."""
        return self.postprocess(self.transformer(**kwargs))

    def postprocess(self, noise_pred: torch.Tensor) -> torch.Tensor:
        """A pass's DiT output as the scheduler takes it."""
        return self.config.postprocess_noise_pred(noise_pred, self.x)

    def guide(self, predictions: list[torch.Tensor]) -> torch.Tensor:
        """This step's prediction from its passes' (one per pass, in order): CFG and any extra pass applied."""
        batch, config = self.batch, self.config
        noise_cond = noise_pred = predictions[0]
        if batch.do_classifier_free_guidance:
            noise_pred = config.combine_cfg(noise_cond, predictions[1], self.cfg_scale, batch)
        if self.has_extra:
            noise_pred = config.combine_extra_pass(noise_pred, noise_cond, predictions[-1], batch)
        return noise_pred

    def next_latents(self, velocity: torch.Tensor) -> torch.Tensor:
        """The latents after this step: the scheduler's step."""
        # fp32 noise keeps the latents in fp32: Diffusers' step casts its result to the prediction's dtype.
        t = self.batch.timesteps[self.step]
        return self.scheduler.step(velocity.float(), t, self.latents, return_dict=False)[0]

    def advance(self, predictions: list[torch.Tensor]) -> None:
        """Guides this step's predictions (one per pass, in order), steps the latents and reports the step."""
        velocity = self.guide(predictions)
        latents, sigma = self.latents, self.batch.sigmas[self.step]
        self.latents = self.next_latents(velocity)
        self.step += 1
        # Every model here is a flow-matching one: x_t = x_0 + sigma (noise - x_0), the DiT predicting the velocity
        # noise - x_0, so x_0 is predicted as x_t - sigma * velocity.
        self.report(lambda: latents - sigma * velocity.float())

    def report(self, predicted_x0: Callable[[], torch.Tensor]) -> None:
        """Tells the request's callbacks that a step is done (a preview gets the result it predicts)."""
        batch = self.batch
        if batch.step_callback is not None:
            batch.step_callback(self.step, self.total)
        if batch.preview_callback is not None and self.step % batch.preview_every == 0 and not self.done:
            batch.preview_callback(self.step, predicted_x0())

    def finish(self) -> Req:
        """The request's batch with its final latents (and what its cache did)."""
        batch = self.batch
        batch.latents = self.latents
        if self.step_cache is not None:
            batch.cache_summary = {"spec": str(self.cache_spec), "branches": self.step_cache.summary()}
        return batch
