"""The standard stages every pipeline is composed of."""

from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.pipelines_core.stages.causal_denoising import CausalDMDDenoisingStage
from easel.runtime.pipelines_core.stages.decoding import DecodingStage
from easel.runtime.pipelines_core.stages.denoising import DenoisingStage
from easel.runtime.pipelines_core.stages.dmd_denoising import DmdDenoisingStage
from easel.runtime.pipelines_core.stages.image_encoding import ImageEncodingStage
from easel.runtime.pipelines_core.stages.image_vae_encoding import ImageVAEEncodingStage
from easel.runtime.pipelines_core.stages.input_validation import InputValidationStage
from easel.runtime.pipelines_core.stages.latent_preparation import LatentPreparationStage
from easel.runtime.pipelines_core.stages.text_encoding import TextEncodingStage
from easel.runtime.pipelines_core.stages.timestep_preparation import TimestepPreparationStage

__all__ = [
    "CausalDMDDenoisingStage",
    "DecodingStage",
    "DenoisingStage",
    "DmdDenoisingStage",
    "ImageEncodingStage",
    "ImageVAEEncodingStage",
    "InputValidationStage",
    "LatentPreparationStage",
    "PipelineStage",
    "TextEncodingStage",
    "TimestepPreparationStage",
]
