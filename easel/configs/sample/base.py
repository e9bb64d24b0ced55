"""`SamplingParams`: what one request asks for. Each model family subclasses it with its own defaults."""

import dataclasses
from typing import Any

from easel.errors import InvalidInputError


@dataclasses.dataclass
class SamplingParams:
    """Per-request generation parameters; a family's subclass sets its defaults."""

    prompt: str | list[str] = ""
    negative_prompt: str | None = None
    guidance_scale: float = 1.0
    true_cfg_scale: float = 1.0
    num_inference_steps: int = 50
    seed: int = 0
    height: int = 1024
    width: int = 1024
    num_frames: int = 1
    fps: int = 16  # frames per second of a written video
    num_outputs_per_prompt: int = 1
    max_sequence_length: int = 512
    output_type: str = "pil"  # "pil", "np" or "latent"
    image: Any = None  # input image(s) of image-conditioned models: a path, a PIL image, or a list of them
    output_path: str | None = None  # a file name, or a folder that gets generated names
    output_format: str = "png"
    # A step-cache spec such as "dbcache:threshold=0.2" or a preset (easel/runtime/cache/spec.py); None: the engine's.
    cache: str | None = None

    def updated(self, **overrides) -> "SamplingParams":
        """A copy with the given fields replaced; `None` values keep the default."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidInputError(f"unknown sampling parameter(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
