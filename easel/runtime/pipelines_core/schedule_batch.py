"""`Req`: the batch one request carries through the stages. Each stage reads some fields and sets others."""

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from easel.configs.sample.base import SamplingParams

# SamplingParams fields that concern the front end (where to write), not the pipeline.
GENERIC_PARAMS = frozenset({"output_path", "output_format", "fps"})


@dataclasses.dataclass
class Req:
    """One generation request: its parameters, the intermediate tensors the stages hand on, and the outputs."""

    # What was asked (from SamplingParams).
    prompt: list[str]
    negative_prompt: list[str] | None = None
    guidance_scale: float = 1.0
    true_cfg_scale: float = 1.0
    num_inference_steps: int = 50
    seed: int = 0
    height: int = 1024
    width: int = 1024
    num_frames: int = 1
    num_outputs_per_prompt: int = 1
    max_sequence_length: int = 512
    output_type: str = "pil"
    image: Any = None  # input image(s) as given: paths, PIL images, or a list of them
    cache: str | None = None  # the step-cache spec; None: the engine's default (ServerArgs.cache)
    # A quality check's reference run: the lossy options of the engine (attention backend, quantized weights) off.
    exact_path: bool = False

    # Input images loaded as RGB, and their VAE latents in the DiT's layout (set by ImageVAEEncodingStage).
    condition_images: list[Image.Image] = dataclasses.field(default_factory=list)
    image_latents: list[torch.Tensor] = dataclasses.field(default_factory=list)
    image_latent_shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)  # before packing
    image_embeds: list[torch.Tensor] = dataclasses.field(
        default_factory=list
    )  # image-encoder tokens (ImageEncodingStage)

    # Guidance, decided by InputValidationStage from the model's PipelineConfig.
    do_classifier_free_guidance: bool = False
    cfg_scale: float = 1.0

    # Conditioning: one tensor per text encoder, repeated for num_outputs_per_prompt.
    prompt_embeds: list[torch.Tensor] = dataclasses.field(default_factory=list)
    negative_prompt_embeds: list[torch.Tensor] = dataclasses.field(default_factory=list)
    # One entry per entry of prompt_embeds: (B, T) with 1 for real tokens, or None when every token counts.
    prompt_embeds_mask: list[torch.Tensor | None] = dataclasses.field(default_factory=list)
    negative_prompt_embeds_mask: list[torch.Tensor | None] = dataclasses.field(default_factory=list)
    pooled_embeds: list[torch.Tensor] = dataclasses.field(default_factory=list)
    neg_pooled_embeds: list[torch.Tensor] = dataclasses.field(default_factory=list)

    # The sampling state DenoisingStage runs on.
    generator: torch.Generator | None = None
    latents: torch.Tensor | None = None
    raw_latent_shape: tuple[int, ...] | None = None  # before packing
    timesteps: torch.Tensor | None = None
    sigmas: list[float] | None = None
    scheduler: Any = None  # the request's own scheduler, set to its schedule (timestep_preparation.set_schedule)
    # Model-specific values: the family's own sampling parameters, and what its stages hand on.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # Called after every denoising step with (steps done, steps in all).
    step_callback: Callable[[int, int], None] | None = None
    # Called every `preview_every` steps (not after the last) with (steps done, the denoised latents the model
    # predicts at that step), for previews of the result.
    preview_every: int = 0
    preview_callback: Callable[[int, torch.Tensor], None] | None = None
    # Called by a block-causal denoising stage with each frame block's final latents, (B, C, f, h, w), in order:
    # what streaming decodes while the next blocks are made.
    block_callback: Callable[[torch.Tensor], None] | None = None

    # Results.
    output: torch.Tensor | None = None  # decoded pixels in 0..1, (B, C, H, W); latents for output_type="latent"
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per stage
    cache_summary: dict[str, Any] | None = None  # what the step cache did: its spec, computed and skipped steps

    @classmethod
    def from_sampling_params(cls, params: SamplingParams) -> "Req":
        """The batch for one request; prompts become lists so one path serves one prompt and many."""
        values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}  # no deep copies
        known = {f.name for f in dataclasses.fields(cls)}
        shared = {name: value for name, value in values.items() if name in known}
        extra = {name: value for name, value in values.items() if name not in known and name not in GENERIC_PARAMS}
        prompts = [params.prompt] if isinstance(params.prompt, str) else list(params.prompt)
        negative = None if params.negative_prompt is None else [params.negative_prompt] * len(prompts)
        return cls(**{**shared, "prompt": prompts, "negative_prompt": negative, "extra": extra})

    @property
    def batch_size(self) -> int:
        """Samples generated in all: every prompt times its number of outputs."""
        return len(self.prompt) * self.num_outputs_per_prompt
