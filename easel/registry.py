"""Which models Easel supports: pipeline classes (found by their `EntryClass`), DiTs, and per-family configs.

A model folder resolves to its pipeline class by `_class_name` in `model_index.json`, and to its family's
`SamplingParams` and `PipelineConfig` by Hugging Face id, by folder name, or by a family's detector.
"""

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from easel.configs.pipeline_configs.base import PipelineConfig
from easel.configs.pipeline_configs.flux import FluxKontextPipelineConfig, FluxPipelineConfig
from easel.configs.pipeline_configs.flux2 import Flux2KleinPipelineConfig, Flux2PipelineConfig
from easel.configs.pipeline_configs.glm_image import GlmImagePipelineConfig
from easel.configs.pipeline_configs.hunyuanvideo15 import (
    HunyuanVideo15ImageToVideoPipelineConfig,
    HunyuanVideo15PipelineConfig,
)
from easel.configs.pipeline_configs.qwen_image import (
    QwenImageEditPipelineConfig,
    QwenImageEditPlusPipelineConfig,
    QwenImagePipelineConfig,
)
from easel.configs.pipeline_configs.qwen_image_layered import QwenImageLayeredPipelineConfig
from easel.configs.pipeline_configs.sd3 import SD3PipelineConfig
from easel.configs.pipeline_configs.wan import WanImageToVideoPipelineConfig, WanPipelineConfig
from easel.configs.pipeline_configs.wan_dmd import (
    FastWan22PipelineConfig,
    WanCausalDMDPipelineConfig,
    WanDMDPipelineConfig,
)
from easel.configs.pipeline_configs.z_image import ZImagePipelineConfig
from easel.configs.sample.base import SamplingParams
from easel.configs.sample.flux import FluxKontextSamplingParams, FluxSamplingParams, FluxSchnellSamplingParams
from easel.configs.sample.flux2 import Flux2KleinBaseSamplingParams, Flux2KleinSamplingParams, Flux2SamplingParams
from easel.configs.sample.glm_image import GlmImageSamplingParams
from easel.configs.sample.hunyuanvideo15 import (
    HunyuanVideo15ImageToVideoSamplingParams,
    HunyuanVideo15SamplingParams,
    HunyuanVideo15720pSamplingParams,
)
from easel.configs.sample.qwen_image import QwenImageEditSamplingParams, QwenImageSamplingParams
from easel.configs.sample.qwen_image_layered import QwenImageLayeredSamplingParams
from easel.configs.sample.sd3 import SD3SamplingParams
from easel.configs.sample.wan import (
    FastWan22SamplingParams,
    FastWanSamplingParams,
    SelfForcingWanSamplingParams,
    WanSamplingParams,
    WanTI2VSamplingParams,
)
from easel.configs.sample.z_image import ZImageSamplingParams, ZImageTurboSamplingParams
from easel.errors import ModelLoadError

# A detector recognizes a family from a folder's model_index.json when neither its id nor its name does.
ModelDetector = Callable[[dict[str, Any]], bool]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """The configs shared by the checkpoints of one model family."""

    name: str
    sampling_param_cls: type[SamplingParams]
    pipeline_config_cls: type[PipelineConfig]
    hf_model_paths: tuple[str, ...]
    model_detectors: tuple[ModelDetector, ...] = ()


_FAMILIES: dict[str, ModelFamily] = {}


def register_configs(
    model_family: str,
    sampling_param_cls: type[SamplingParams],
    pipeline_config_cls: type[PipelineConfig],
    hf_model_paths: list[str],
    model_detectors: list[ModelDetector] = (),
) -> None:
    """Declares a model family; the first family whose detector fires is the default for unnamed folders."""
    _FAMILIES[model_family] = ModelFamily(
        model_family, sampling_param_cls, pipeline_config_cls, tuple(hf_model_paths), tuple(model_detectors)
    )


def _entry_classes(package_name: str) -> list[type]:
    """Every class named by an `EntryClass` (a class or a list of them) in the package's modules."""
    package = importlib.import_module(package_name)
    found = []
    for module_info in pkgutil.iter_modules(package.__path__):
        entry = getattr(importlib.import_module(f"{package_name}.{module_info.name}"), "EntryClass", None)
        if entry is not None:
            found.extend(entry if isinstance(entry, list | tuple) else [entry])
    return found


@functools.cache
def pipeline_classes() -> dict[str, type]:
    """Pipeline classes by `pipeline_name`, discovered under easel/runtime/pipelines/."""
    return {cls.pipeline_name: cls for cls in _entry_classes("easel.runtime.pipelines")}


@functools.cache
def dit_classes() -> dict[str, type]:
    """Our DiTs by the Diffusers class name they load, discovered under easel/runtime/models/dits/."""
    return {cls.__name__: cls for cls in _entry_classes("easel.runtime.models.dits")}


def supported_models() -> str:
    """One line listing the supported pipelines and Hugging Face ids, for error messages."""
    ids = [hf_id for family in _FAMILIES.values() for hf_id in family.hf_model_paths]
    return f"pipelines {', '.join(sorted(pipeline_classes()))}; models {', '.join(ids)}"


def resolve_pipeline_class(index: dict[str, Any]) -> type:
    class_name = index["_class_name"]
    if class_name not in pipeline_classes():
        raise ModelLoadError(f"Easel does not support {class_name}; it supports {supported_models()}")
    return pipeline_classes()[class_name]


def resolve_model_family(folder: Path, index: dict[str, Any], hf_id: str | None = None) -> ModelFamily:
    """The family of a model folder: by Hugging Face id, then folder name, then detectors."""
    for family in _FAMILIES.values():
        if hf_id in family.hf_model_paths:
            return family
    for family in _FAMILIES.values():
        if folder.name.lower() in (path.split("/")[-1].lower() for path in family.hf_model_paths):
            return family
    for family in _FAMILIES.values():
        if any(detect(index) for detect in family.model_detectors):
            return family
    raise ModelLoadError(f"no model family matches {folder}; Easel supports {supported_models()}")


register_configs(
    model_family="flux",
    sampling_param_cls=FluxSamplingParams,
    pipeline_config_cls=FluxPipelineConfig,
    hf_model_paths=["black-forest-labs/FLUX.1-dev"],
    model_detectors=[lambda index: index["_class_name"] == "FluxPipeline"],
)
register_configs(
    model_family="flux-schnell",
    sampling_param_cls=FluxSchnellSamplingParams,
    pipeline_config_cls=FluxPipelineConfig,
    hf_model_paths=["black-forest-labs/FLUX.1-schnell"],
)
register_configs(
    model_family="flux-kontext",
    sampling_param_cls=FluxKontextSamplingParams,
    pipeline_config_cls=FluxKontextPipelineConfig,
    hf_model_paths=["black-forest-labs/FLUX.1-Kontext-dev"],
    model_detectors=[lambda index: index["_class_name"] == "FluxKontextPipeline"],
)
register_configs(
    model_family="sd3",
    sampling_param_cls=SD3SamplingParams,
    pipeline_config_cls=SD3PipelineConfig,
    hf_model_paths=[
        "stabilityai/stable-diffusion-3-medium-diffusers",
        "stabilityai/stable-diffusion-3.5-medium",
        "stabilityai/stable-diffusion-3.5-large",
    ],
    model_detectors=[lambda index: index["_class_name"] == "StableDiffusion3Pipeline"],
)
register_configs(
    model_family="z-image-turbo",
    sampling_param_cls=ZImageTurboSamplingParams,
    pipeline_config_cls=ZImagePipelineConfig,
    hf_model_paths=["Tongyi-MAI/Z-Image-Turbo"],
    model_detectors=[lambda index: index["_class_name"] == "ZImagePipeline"],
)
register_configs(
    model_family="z-image",
    sampling_param_cls=ZImageSamplingParams,
    pipeline_config_cls=ZImagePipelineConfig,
    hf_model_paths=["Tongyi-MAI/Z-Image"],
)
register_configs(
    model_family="qwen-image",
    sampling_param_cls=QwenImageSamplingParams,
    pipeline_config_cls=QwenImagePipelineConfig,
    hf_model_paths=["Qwen/Qwen-Image", "Qwen/Qwen-Image-2512"],
    model_detectors=[lambda index: index["_class_name"] == "QwenImagePipeline"],
)
register_configs(
    model_family="qwen-image-edit",
    sampling_param_cls=QwenImageEditSamplingParams,
    pipeline_config_cls=QwenImageEditPipelineConfig,
    hf_model_paths=["Qwen/Qwen-Image-Edit"],
    model_detectors=[lambda index: index["_class_name"] == "QwenImageEditPipeline"],
)
register_configs(
    model_family="qwen-image-edit-plus",
    sampling_param_cls=QwenImageEditSamplingParams,
    pipeline_config_cls=QwenImageEditPlusPipelineConfig,
    hf_model_paths=["Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image-Edit-2511"],
    model_detectors=[lambda index: index["_class_name"] == "QwenImageEditPlusPipeline"],
)
register_configs(
    model_family="qwen-image-layered",
    sampling_param_cls=QwenImageLayeredSamplingParams,
    pipeline_config_cls=QwenImageLayeredPipelineConfig,
    hf_model_paths=["Qwen/Qwen-Image-Layered"],
    model_detectors=[lambda index: index["_class_name"] == "QwenImageLayeredPipeline"],
)
register_configs(
    model_family="wan",
    sampling_param_cls=WanSamplingParams,
    pipeline_config_cls=WanPipelineConfig,
    hf_model_paths=[
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    ],
    model_detectors=[lambda index: index["_class_name"] == "WanPipeline"],
)
register_configs(
    model_family="wan-i2v",
    sampling_param_cls=WanSamplingParams,
    pipeline_config_cls=WanImageToVideoPipelineConfig,
    hf_model_paths=[
        "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    ],
    model_detectors=[lambda index: index["_class_name"] == "WanImageToVideoPipeline"],
)
register_configs(
    model_family="wan2.2-ti2v",
    sampling_param_cls=WanTI2VSamplingParams,
    pipeline_config_cls=WanPipelineConfig,
    hf_model_paths=["Wan-AI/Wan2.2-TI2V-5B-Diffusers"],
)
register_configs(
    model_family="fastwan",
    sampling_param_cls=FastWanSamplingParams,
    pipeline_config_cls=WanDMDPipelineConfig,
    hf_model_paths=["FastVideo/FastWan2.1-T2V-1.3B-Diffusers"],
    model_detectors=[lambda index: index["_class_name"] == "WanDMDPipeline" and not index.get("expand_timesteps")],
)
register_configs(
    model_family="fastwan2.2-ti2v",
    sampling_param_cls=FastWan22SamplingParams,
    pipeline_config_cls=FastWan22PipelineConfig,
    hf_model_paths=["FastVideo/FastWan2.2-TI2V-5B-Diffusers", "FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers"],
    # Wan2.2-TI2V's model_index sets expand_timesteps (one timestep per token), as a folder converted from it would.
    model_detectors=[lambda index: index["_class_name"] == "WanDMDPipeline" and bool(index.get("expand_timesteps"))],
)
register_configs(
    model_family="wan-causal",
    sampling_param_cls=SelfForcingWanSamplingParams,
    pipeline_config_cls=WanCausalDMDPipelineConfig,
    hf_model_paths=["wlsaidhi/SFWan2.1-T2V-1.3B-Diffusers"],
    model_detectors=[lambda index: index["_class_name"] == "WanCausalDMDPipeline"],
)
register_configs(
    model_family="flux2",
    sampling_param_cls=Flux2SamplingParams,
    pipeline_config_cls=Flux2PipelineConfig,
    hf_model_paths=["black-forest-labs/FLUX.2-dev"],
    model_detectors=[lambda index: index["_class_name"] == "Flux2Pipeline"],
)
register_configs(
    model_family="flux2-klein",
    sampling_param_cls=Flux2KleinSamplingParams,
    pipeline_config_cls=Flux2KleinPipelineConfig,
    hf_model_paths=["black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-9B"],
    model_detectors=[lambda index: index["_class_name"] == "Flux2KleinPipeline" and bool(index.get("is_distilled"))],
)
register_configs(
    model_family="flux2-klein-base",
    sampling_param_cls=Flux2KleinBaseSamplingParams,
    pipeline_config_cls=Flux2KleinPipelineConfig,
    hf_model_paths=["black-forest-labs/FLUX.2-klein-base-4B", "black-forest-labs/FLUX.2-klein-base-9B"],
    model_detectors=[lambda index: index["_class_name"] == "Flux2KleinPipeline" and not index.get("is_distilled")],
)
register_configs(
    model_family="glm-image",
    sampling_param_cls=GlmImageSamplingParams,
    pipeline_config_cls=GlmImagePipelineConfig,
    hf_model_paths=["zai-org/GLM-Image"],
    model_detectors=[lambda index: index["_class_name"] == "GlmImagePipeline"],
)
register_configs(
    model_family="hunyuanvideo-1.5",
    sampling_param_cls=HunyuanVideo15SamplingParams,
    pipeline_config_cls=HunyuanVideo15PipelineConfig,
    hf_model_paths=["hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v"],
    model_detectors=[lambda index: index["_class_name"] == "HunyuanVideo15Pipeline"],
)
register_configs(
    model_family="hunyuanvideo-1.5-720p",
    sampling_param_cls=HunyuanVideo15720pSamplingParams,
    pipeline_config_cls=HunyuanVideo15PipelineConfig,
    hf_model_paths=["hunyuanvideo-community/HunyuanVideo-1.5-720p_t2v"],
)
register_configs(
    model_family="hunyuanvideo-1.5-i2v",
    sampling_param_cls=HunyuanVideo15ImageToVideoSamplingParams,
    pipeline_config_cls=HunyuanVideo15ImageToVideoPipelineConfig,
    hf_model_paths=[
        "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v",
        "hunyuanvideo-community/HunyuanVideo-1.5-720p_i2v",
    ],
    model_detectors=[lambda index: index["_class_name"] == "HunyuanVideo15ImageToVideoPipeline"],
)
