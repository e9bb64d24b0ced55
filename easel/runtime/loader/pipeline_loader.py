"""From a model path to a ready pipeline: resolve the folder, pick pipeline class and family, load modules."""

import json

from easel.configs.sample.base import SamplingParams
from easel.errors import InvalidInputError, ModelLoadError
from easel.registry import ModelFamily, resolve_model_family, resolve_pipeline_class
from easel.runtime.host_allocator import keep_freed_host_memory
from easel.runtime.layers.attention import set_attention_backend
from easel.runtime.layers.kernel_backend import set_kernel_backend
from easel.runtime.loader.component_loader import read_model_index
from easel.runtime.loader.model_path import resolve_model_path
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.server_args import ServerArgs

# A folder may name the sampling defaults it was made for, over its family's (the demo model draws 64x64 images in
# a few steps, where FLUX.1-dev draws 1024x1024 in 28). Diffusers ignores model_index.json keys that start with "_".
SAMPLING_DEFAULTS_KEY = "_easel_sampling_defaults"


def load_pipeline(server_args: ServerArgs) -> tuple[ComposedPipelineBase, ModelFamily, SamplingParams]:
    """Loads the model `server_args.model_path` names; sets `server_args.pipeline_config` to its family's.

    Returns the pipeline, its family and the sampling defaults of its requests.
    """
    folder, hf_id = resolve_model_path(server_args.model_path)
    index = read_model_index(folder)
    pipeline_cls = resolve_pipeline_class(index)
    family = resolve_model_family(folder, index, hf_id)
    defaults = {}
    guider = folder / "guider" / "guider_config.json"
    if "guider" in index and guider.exists():
        # Diffusers' guiders (HunyuanVideo-1.5's) keep the checkpoint's CFG scale in the folder: the default here.
        defaults["guidance_scale"] = json.loads(guider.read_text())["guidance_scale"]
    defaults.update(index.get(SAMPLING_DEFAULTS_KEY, {}))
    try:
        sampling_defaults = family.sampling_param_cls().updated(**defaults)
    except InvalidInputError as error:
        raise ModelLoadError(f"{folder / 'model_index.json'}: {SAMPLING_DEFAULTS_KEY}: {error}") from None
    server_args.pipeline_config = family.pipeline_config_cls()
    set_attention_backend(server_args.attention_backend)
    set_kernel_backend(server_args.kernel_backend)
    if server_args.torch_device.type == "cpu":
        keep_freed_host_memory()  # every large activation would page-fault in anew otherwise
    return pipeline_cls(folder, server_args), family, sampling_defaults
