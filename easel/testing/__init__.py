"""Random-weight pipelines in Diffusers format, built offline and deterministically, for tests and benchmarks."""

import functools
import os
import pathlib
from collections.abc import Callable

from easel.testing.flux import (
    FLUX_VARIANTS,
    MEDIUM_FLUX_TRANSFORMER_CONFIG,
    TINY_FLUX_TRANSFORMER_CONFIG,
    TINY_FLUX_VAE_CONFIG,
    build_flux_pipeline,
)
from easel.testing.flux2 import FLUX2_BUILDERS
from easel.testing.glm_image import GLM_IMAGE_BUILDERS
from easel.testing.hunyuanvideo15 import HUNYUANVIDEO15_BUILDERS
from easel.testing.qwen_image import QWEN_IMAGE_BUILDERS
from easel.testing.sd3 import SD3_BUILDERS
from easel.testing.wan import WAN_BUILDERS
from easel.testing.z_image import Z_IMAGE_BUILDERS

PipelineBuilder = Callable[[str | os.PathLike[str], int], pathlib.Path]

# kind -> builder(path, seed). A new model family adds its tiny kinds here.
TINY_PIPELINE_BUILDERS: dict[str, PipelineBuilder] = {
    "flux": functools.partial(build_flux_pipeline, variant="dev"),
    "flux-schnell": functools.partial(build_flux_pipeline, variant="schnell"),
    "flux-kontext": functools.partial(build_flux_pipeline, variant="kontext"),
    **FLUX2_BUILDERS,
    **GLM_IMAGE_BUILDERS,
    **HUNYUANVIDEO15_BUILDERS,
    **QWEN_IMAGE_BUILDERS,
    **SD3_BUILDERS,
    **WAN_BUILDERS,
    **Z_IMAGE_BUILDERS,
}


def build_tiny_pipeline(kind: str, path: str | os.PathLike[str], seed: int = 0) -> pathlib.Path:
    """Write a tiny random-weight pipeline of `kind` (a key of `TINY_PIPELINE_BUILDERS`) at `path`; return it."""
    try:
        builder = TINY_PIPELINE_BUILDERS[kind]
    except KeyError:
        raise ValueError(
            f"Unknown tiny pipeline kind {kind!r}; known kinds: {sorted(TINY_PIPELINE_BUILDERS)}"
        ) from None
    return builder(path, seed)


__all__ = [
    "FLUX_VARIANTS",
    "MEDIUM_FLUX_TRANSFORMER_CONFIG",
    "TINY_FLUX_TRANSFORMER_CONFIG",
    "TINY_FLUX_VAE_CONFIG",
    "TINY_PIPELINE_BUILDERS",
    "build_flux_pipeline",
    "build_tiny_pipeline",
]
