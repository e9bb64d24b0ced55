"""Loading the components `model_index.json` lists: our own DiTs, and the rest from transformers / diffusers."""

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

import torch

from easel.errors import EaselError, ModelLoadError
from easel.runtime.distributed.parallel_state import get_tp_world_size
from easel.runtime.layers.linear import checkpoint_sharder
from easel.runtime.layers.quantization import quantize_dit
from easel.runtime.loader.processors import PROCESSOR_LOADERS
from easel.runtime.loader.weights import load_state_dict
from easel.runtime.models.dits.layerwise_offload import enable_layerwise_offload
from easel.runtime.models.dits.regional_compile import compile_repeated_blocks
from easel.runtime.server_args import ServerArgs

LIBRARIES = ("diffusers", "transformers")


def read_model_index(folder: Path) -> dict[str, Any]:
    """The parsed `model_index.json`, checked to name a pipeline class."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{folder / 'model_index.json'} is not valid JSON: {error}") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ModelLoadError(f"{folder / 'model_index.json'} names no pipeline in '_class_name'")
    return index


def load_pipeline_modules(
    folder: Path, index: dict[str, Any], required: list[str], server_args: ServerArgs
) -> dict[str, Any]:
    """Loads every required module; the DiT and VAE configs found on disk replace the pipeline config's defaults."""
    absent = [name for name in required if not isinstance(index.get(name), list) or index[name][0] is None]
    if absent:
        raise ModelLoadError(
            f"{folder / 'model_index.json'} lists no {', '.join(absent)}, which {index['_class_name']} needs"
        )
    modules = {name: load_component(name, *index[name], folder / name, server_args) for name in required}
    config = server_args.pipeline_config
    for name in config_field_names(config):  # pipeline-level settings (Wan2.2's boundary_ratio) override defaults
        if name in index:
            setattr(config, name, index[name])
    if "transformer" in modules:
        config.dit_config = modules["transformer"].config
    if "vae" in modules:
        config.vae_config = type(config.vae_config).from_vae(modules["vae"])
        if server_args.vae_tiling:
            modules["vae"].enable_tiling()
        if server_args.vae_slicing:
            modules["vae"].enable_slicing()
    return modules


def config_field_names(config: Any) -> set[str]:
    return {field.name for field in dataclasses.fields(config)}


def load_component(name: str, library: str, class_name: str, folder: Path, server_args: ServerArgs) -> Any:
    """One component: ours if Easel has its own implementation of `class_name`, else the library's."""
    from easel.registry import dit_classes

    if not folder.is_dir():
        raise ModelLoadError(f"component folder {folder} is missing")
    is_dit = name.startswith("transformer")
    if is_dit and class_name not in dit_classes():
        raise ModelLoadError(f"Easel has no DiT for {class_name}; it has {', '.join(sorted(dit_classes()))}")
    try:
        if is_dit:
            return load_dit(dit_classes()[class_name], folder, server_args)
        return _load_from_library(name, library, class_name, folder, server_args)
    except EaselError:
        raise
    except Exception as error:
        raise ModelLoadError(f"could not load {name} ({class_name}) from {folder}: {error}") from None


def load_dit(dit_cls: type[torch.nn.Module], folder: Path, server_args: ServerArgs) -> torch.nn.Module:
    """Builds our DiT on the meta device (no memory, no init) and loads the checkpoint's tensors into it as they are."""
    config_cls = type(server_args.pipeline_config.dit_config)
    config = config_cls.from_dict(json.loads((folder / "config.json").read_text()))
    # Layerwise offload keeps the blocks in host memory: the checkpoint is read there, and the rest moved.
    device = torch.device("cpu") if server_args.dit_layerwise_offload else server_args.torch_device
    with torch.device("meta"):
        model = dit_cls(config)
    # Under tensor parallelism each rank reads only its shards of the parallel linears' weights.
    shard = checkpoint_sharder(model) if get_tp_world_size() > 1 else None
    state_dict = load_state_dict(folder, device, shard)
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{folder} does not fit {dit_cls.__name__} with its config.json: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model = model.to(server_args.dtype_for("dit")).eval().requires_grad_(False)
    apply_speed_options(model, server_args)
    return model


def apply_speed_options(dit: torch.nn.Module, server_args: ServerArgs) -> None:
    """The options that change a loaded DiT, in the one order that works: quantize the weights, then stream the
    blocks from host memory, or compile each block class (README: Speed)."""
    if server_args.dit_quantization is not None:
        quantize_dit(dit, server_args.dit_quantization)
    if server_args.dit_layerwise_offload:
        enable_layerwise_offload(dit, server_args.torch_device)
    if server_args.enable_torch_compile:
        compile_repeated_blocks(dit)


def _load_from_library(name: str, library: str, class_name: str, folder: Path, server_args: ServerArgs) -> Any:
    if library not in LIBRARIES:
        raise ModelLoadError(f"{name} comes from {library!r}; Easel loads components from {LIBRARIES}")
    if class_name in PROCESSOR_LOADERS:
        return PROCESSOR_LOADERS[class_name](folder)
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelLoadError(f"{library} has no class {class_name} (named for {name} in model_index.json)")
    if not issubclass(cls, torch.nn.Module):  # tokenizers, schedulers, processors
        return cls.from_pretrained(folder)
    dtype = server_args.dtype_for("vae" if name == "vae" else "text_encoder")
    model = cls.from_pretrained(folder, dtype=dtype)
    return model.to(server_args.torch_device).eval().requires_grad_(False)
