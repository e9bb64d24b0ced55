"""From a model path to a ready pipeline: resolve the folder, pick pipeline class and family, load modules."""

from easel.registry import ModelFamily, resolve_model_family, resolve_pipeline_class
from easel.runtime.layers.attention import set_attention_backend
from easel.runtime.loader.component_loader import read_model_index
from easel.runtime.loader.model_path import resolve_model_path
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.server_args import ServerArgs


def load_pipeline(server_args: ServerArgs) -> tuple[ComposedPipelineBase, ModelFamily]:
    """Loads the model `server_args.model_path` names; sets `server_args.pipeline_config` to its family's."""
    folder, hf_id = resolve_model_path(server_args.model_path)
    index = read_model_index(folder)
    pipeline_cls = resolve_pipeline_class(index)
    family = resolve_model_family(folder, index, hf_id)
    server_args.pipeline_config = family.pipeline_config_cls()
    set_attention_backend(server_args.attention_backend)
    return pipeline_cls(folder, server_args), family
