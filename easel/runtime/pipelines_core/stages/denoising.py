"""`DenoisingStage`: the sampling loop every model shares. Model differences live in PipelineConfig callbacks."""

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
        config = server_args.pipeline_config
        dtype = next(self.transformer.parameters()).dtype
        for field in CONDITIONING_FIELDS:
            setattr(batch, field, [e.to(dtype) for e in getattr(batch, field)])
        rotary_emb = getattr(self.transformer, "rotary_emb", None)
        freqs_cis = config.get_freqs_cis(batch, batch.latents.device, rotary_emb, dtype)

        latents = batch.latents
        total = len(batch.timesteps)
        spec = parse_cache_spec(batch.cache if batch.cache is not None else server_args.cache)
        # Per request: the cache's state is this loop's and goes with it.
        step_cache = StepCache(spec, self.experts, total) if spec.enabled else None
        self.scheduler.set_begin_index(0)  # the scheduler then never searches its timesteps (a host sync)
        for i, t in enumerate(tqdm(batch.timesteps, desc="denoising", disable=not server_args.progress_bar)):
            expert, cfg_scale = config.select_expert(batch, t)
            noise_pred = self.predict_noise(
                batch, config, expert, latents.to(dtype), t, i, freqs_cis, cfg_scale, step_cache
            )
            # fp32 noise keeps the latents in fp32: Diffusers' step casts its result to the prediction's dtype.
            latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]
            if batch.step_callback is not None:
                batch.step_callback(i + 1, total)
        batch.latents = latents
        if step_cache is not None:
            batch.cache_summary = {"spec": str(spec), "branches": step_cache.summary()}
        return batch

    def predict_noise(
        self,
        batch: Req,
        config,
        expert: int,
        x: torch.Tensor,
        t: torch.Tensor,
        step: int,
        freqs_cis,
        cfg_scale: float,
        step_cache: StepCache | None = None,
    ) -> torch.Tensor:
        """The guided prediction of one step: the conditional pass, CFG's unconditional one, any extra pass."""
        transformer = self.experts[expert]

        def run(kwargs: dict) -> torch.Tensor:
            return config.postprocess_noise_pred(transformer(**kwargs), x)

        passes = {"cond": config.prepare_pos_cond_kwargs(batch, x, t, freqs_cis=freqs_cis)}
        if batch.do_classifier_free_guidance:
            passes["uncond"] = config.prepare_neg_cond_kwargs(batch, x, t, freqs_cis=freqs_cis)
        extra_kwargs = config.prepare_extra_pass_kwargs(batch, x, t, step, freqs_cis=freqs_cis)
        if extra_kwargs is not None:
            passes["extra"] = extra_kwargs
        if step_cache is not None:
            step_cache.attach(passes, step, expert if len(self.experts) > 1 else None)
        predictions = run_passes(run, list(passes.values()))  # under CFG parallelism, spread over the CFG group

        noise_cond = noise_pred = predictions[0]
        if batch.do_classifier_free_guidance:
            noise_pred = config.combine_cfg(noise_cond, predictions[1], cfg_scale, batch)
        if extra_kwargs is not None:
            noise_pred = config.combine_extra_pass(noise_pred, noise_cond, predictions[-1], batch)
        return noise_pred
