"""`InputValidationStage`: reject a bad request before any model runs, and decide its guidance."""

from easel.errors import InvalidInputError
from easel.runtime.inputs import as_list, load_images
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs

OUTPUT_TYPES = ("pil", "np", "latent")
MAX_STEPS = 1000


class InputValidationStage(PipelineStage):
    """Checks the request's parameters against the model's limits; every message says what to change."""

    input_fields = ("prompt",)

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        config = server_args.pipeline_config
        count, (low, high) = len(as_list(batch.image)), config.input_image_range()
        if not low <= count <= high:
            wanted = f"{low}" if low == high else f"{low} to {high}"
            raise InvalidInputError(f"this model takes {wanted} input image(s), got {count}")
        batch.condition_images = load_images(batch.image)
        config.prepare_request(batch)
        if any(not p or not p.strip() for p in batch.prompt):
            raise InvalidInputError("the prompt is empty: describe what to generate")
        multiple = config.pixel_multiple()
        for name in ("height", "width"):
            value = getattr(batch, name)
            if not isinstance(value, int) or value % multiple:
                raise InvalidInputError(f"{name} must be a multiple of {multiple} pixels for this model, got {value}")
            if not multiple <= value <= config.max_resolution:
                raise InvalidInputError(
                    f"{name} must be between {multiple} and {config.max_resolution} pixels, got {value}"
                )
        if not 1 <= batch.num_inference_steps <= MAX_STEPS:
            raise InvalidInputError(
                f"num_inference_steps must be between 1 and {MAX_STEPS}, got {batch.num_inference_steps}"
            )
        for name in ("guidance_scale", "true_cfg_scale"):
            if getattr(batch, name) < 0:
                raise InvalidInputError(f"{name} must not be negative, got {getattr(batch, name)}")
        if batch.num_outputs_per_prompt < 1:
            raise InvalidInputError(f"num_outputs_per_prompt must be at least 1, got {batch.num_outputs_per_prompt}")
        if batch.output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type must be one of {OUTPUT_TYPES}, got {batch.output_type!r}")

        cfg_scale = config.cfg_scale(batch)
        batch.do_classifier_free_guidance = cfg_scale is not None
        batch.cfg_scale = cfg_scale or 1.0
        return batch
