"""Qwen-Image-Layered sampling defaults, as Diffusers' `QwenImageLayeredPipeline` gives them."""

import dataclasses

from easel.configs.sample.qwen_image import QwenImageSamplingParams

# The resolution buckets Qwen-Image-Layered was trained at: the output (and the input image, resized to it) covers
# about bucket x bucket pixels at the input image's aspect ratio.
LAYERED_RESOLUTIONS = (640, 1024)


@dataclasses.dataclass
class QwenImageLayeredSamplingParams(QwenImageSamplingParams):
    """50 steps, true CFG 4.0 with a negative prompt; 4 layers at the 640 bucket. The output size follows the input
    image's aspect ratio at `resolution`; `height` and `width` are ignored."""

    layers: int = 4  # RGBA layers the input image is decomposed into
    resolution: int = 640  # one of LAYERED_RESOLUTIONS
    cfg_normalize: bool = False  # rescale the guided prediction to the conditional one's norm, per token
