"""Reading LoRA files and matching their modules to ours.

Two layouts are published. Diffusers / PEFT: `transformer.<module path>.lora_A.weight` / `.lora_B.weight`, an
optional `.alpha` per module, or the adapter config in the file's `lora_adapter_metadata`. kohya / ComfyUI:
`lora_unet_<module name with _ for .>.lora_down.weight` / `.lora_up.weight` / `.alpha` (or `diffusion_model.` and
dotted names), often named after the model's original code rather than Diffusers'. A module's update is
scale * up @ down with scale = alpha / rank, alpha defaulting to the rank.

A module name is matched, in order: as our module path; as our module path with every `.` turned into `_`; through
the DiT family's table of original names (`ORIGINAL_NAMES`) below.
"""

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from easel.errors import InvalidInputError, ModelLoadError
from easel.runtime.layers.linear import full_features
from easel.runtime.layers.lora import LoRAWeights

DIT = "dit"  # the component of a DiT module: applied to each DiT the adapter targets

# File prefix -> component; the first match wins, so a longer prefix comes before its own prefixes.
COMPONENT_PREFIXES = (
    ("lora_unet_", DIT),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te_", "text_encoder"),
    ("diffusion_model.", DIT),
    ("transformer.", DIT),
    ("base_model.model.", DIT),
    ("text_encoder_2.", "text_encoder_2"),
    ("text_encoder.", "text_encoder"),
)
# Diffusers' adapter metadata names a component by its pipeline attribute.
METADATA_PREFIXES = {DIT: "transformer", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}
KEY_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_down.weight": "down",
    ".lora_B.weight": "up",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
}

_FLUX_DOUBLE = r"transformer_blocks.\1"
_FLUX_SINGLE = r"single_transformer_blocks.\1"
_WAN_BLOCK = r"blocks.\1"

# DiT class -> {original module name with `_` for `.` (a regex): our module paths}. Several paths split a fused
# layer: its lora_up rows go to each in turn (by their output sizes), its lora_down is shared.
ORIGINAL_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    # BFL's FLUX.1 code, as kohya's sd-scripts and ComfyUI name it.
    "FluxTransformer2DModel": {
        r"double_blocks_(\d+)_img_attn_qkv": tuple(f"{_FLUX_DOUBLE}.attn.to_{x}" for x in "qkv"),
        r"double_blocks_(\d+)_img_attn_proj": (f"{_FLUX_DOUBLE}.attn.to_out.0",),
        r"double_blocks_(\d+)_img_mlp_0": (f"{_FLUX_DOUBLE}.ff.net.0.proj",),
        r"double_blocks_(\d+)_img_mlp_2": (f"{_FLUX_DOUBLE}.ff.net.2",),
        r"double_blocks_(\d+)_img_mod_lin": (f"{_FLUX_DOUBLE}.norm1.linear",),
        r"double_blocks_(\d+)_txt_attn_qkv": tuple(f"{_FLUX_DOUBLE}.attn.add_{x}_proj" for x in "qkv"),
        r"double_blocks_(\d+)_txt_attn_proj": (f"{_FLUX_DOUBLE}.attn.to_add_out",),
        r"double_blocks_(\d+)_txt_mlp_0": (f"{_FLUX_DOUBLE}.ff_context.net.0.proj",),
        r"double_blocks_(\d+)_txt_mlp_2": (f"{_FLUX_DOUBLE}.ff_context.net.2",),
        r"double_blocks_(\d+)_txt_mod_lin": (f"{_FLUX_DOUBLE}.norm1_context.linear",),
        r"single_blocks_(\d+)_linear1": (*(f"{_FLUX_SINGLE}.attn.to_{x}" for x in "qkv"), f"{_FLUX_SINGLE}.proj_mlp"),
        r"single_blocks_(\d+)_linear2": (f"{_FLUX_SINGLE}.proj_out",),
        r"single_blocks_(\d+)_modulation_lin": (f"{_FLUX_SINGLE}.norm.linear",),
        "img_in": ("x_embedder",),
        "txt_in": ("context_embedder",),
        "time_in_in_layer": ("time_text_embed.timestep_embedder.linear_1",),
        "time_in_out_layer": ("time_text_embed.timestep_embedder.linear_2",),
        "vector_in_in_layer": ("time_text_embed.text_embedder.linear_1",),
        "vector_in_out_layer": ("time_text_embed.text_embedder.linear_2",),
        "guidance_in_in_layer": ("time_text_embed.guidance_embedder.linear_1",),
        "guidance_in_out_layer": ("time_text_embed.guidance_embedder.linear_2",),
        "final_layer_linear": ("proj_out",),
    },
    # BFL's FLUX.2 code (ai-toolkit's `diffusion_model.double_blocks.0.img_attn.qkv`, kohya's flattened names).
    "Flux2Transformer2DModel": {
        r"double_blocks_(\d+)_img_attn_qkv": tuple(f"{_FLUX_DOUBLE}.attn.to_{x}" for x in "qkv"),
        r"double_blocks_(\d+)_img_attn_proj": (f"{_FLUX_DOUBLE}.attn.to_out.0",),
        r"double_blocks_(\d+)_img_mlp_0": (f"{_FLUX_DOUBLE}.ff.linear_in",),
        r"double_blocks_(\d+)_img_mlp_2": (f"{_FLUX_DOUBLE}.ff.linear_out",),
        r"double_blocks_(\d+)_txt_attn_qkv": tuple(f"{_FLUX_DOUBLE}.attn.add_{x}_proj" for x in "qkv"),
        r"double_blocks_(\d+)_txt_attn_proj": (f"{_FLUX_DOUBLE}.attn.to_add_out",),
        r"double_blocks_(\d+)_txt_mlp_0": (f"{_FLUX_DOUBLE}.ff_context.linear_in",),
        r"double_blocks_(\d+)_txt_mlp_2": (f"{_FLUX_DOUBLE}.ff_context.linear_out",),
        r"single_blocks_(\d+)_linear1": (f"{_FLUX_SINGLE}.attn.to_qkv_mlp_proj",),
        r"single_blocks_(\d+)_linear2": (f"{_FLUX_SINGLE}.attn.to_out",),
        "img_in": ("x_embedder",),
        "txt_in": ("context_embedder",),
        "time_in_in_layer": ("time_guidance_embed.timestep_embedder.linear_1",),
        "time_in_out_layer": ("time_guidance_embed.timestep_embedder.linear_2",),
        "guidance_in_in_layer": ("time_guidance_embed.guidance_embedder.linear_1",),
        "guidance_in_out_layer": ("time_guidance_embed.guidance_embedder.linear_2",),
        "final_layer_linear": ("proj_out",),
        "final_layer_adaLN_modulation_1": ("norm_out.linear",),
        "single_stream_modulation_lin": ("single_stream_modulation.linear",),
        "double_stream_modulation_img_lin": ("double_stream_modulation_img.linear",),
        "double_stream_modulation_txt_lin": ("double_stream_modulation_txt.linear",),
    },
    # Wan's original code, as ComfyUI (`diffusion_model.blocks.0.self_attn.q`) and musubi-tuner (`lora_unet_...`).
    "WanTransformer3DModel": {
        r"blocks_(\d+)_self_attn_([qkv])": (rf"{_WAN_BLOCK}.attn1.to_\2",),
        r"blocks_(\d+)_self_attn_o": (f"{_WAN_BLOCK}.attn1.to_out.0",),
        r"blocks_(\d+)_cross_attn_([qkv])": (rf"{_WAN_BLOCK}.attn2.to_\2",),
        r"blocks_(\d+)_cross_attn_o": (f"{_WAN_BLOCK}.attn2.to_out.0",),
        r"blocks_(\d+)_cross_attn_([kv])_img": (rf"{_WAN_BLOCK}.attn2.add_\2_proj",),
        r"blocks_(\d+)_ffn_0": (f"{_WAN_BLOCK}.ffn.net.0.proj",),
        r"blocks_(\d+)_ffn_2": (f"{_WAN_BLOCK}.ffn.net.2",),
        "text_embedding_0": ("condition_embedder.text_embedder.linear_1",),
        "text_embedding_2": ("condition_embedder.text_embedder.linear_2",),
        "time_embedding_0": ("condition_embedder.time_embedder.linear_1",),
        "time_embedding_2": ("condition_embedder.time_embedder.linear_2",),
        "time_projection_1": ("condition_embedder.time_proj",),
        "head_head": ("proj_out",),
        "img_emb_proj_1": ("condition_embedder.image_embedder.ff.net.0.proj",),
        "img_emb_proj_3": ("condition_embedder.image_embedder.ff.net.2",),
    },
    # Qwen-Image files use Diffusers' own names (dotted, or flattened after `lora_unet_`): no table needed.
}


@dataclasses.dataclass
class LoRAModule:
    """One module's low-rank pair as a file holds it."""

    key: str  # the name in the file, prefix included, suffix dropped: what messages show
    component: str  # DIT, "text_encoder" or "text_encoder_2"
    name: str  # the module's name without the component prefix
    weights: LoRAWeights


@dataclasses.dataclass
class LoRAFile:
    """A parsed LoRA file: its modules, and the keys that are not LoRA pairs (reported, never applied)."""

    path: Path
    modules: list[LoRAModule]
    unsupported_keys: list[str]


def resolve_lora_path(lora_dir: str | Path, requested: str | Path) -> Path:
    """The file `requested` names inside `lora_dir` (relative to it, or absolute within it); anything that leads
    outside, by `..` or a link, is refused: a server reads LoRA files from its `--lora-dir` only."""
    root = Path(lora_dir).resolve()
    path = (root / requested).resolve()  # an absolute `requested` replaces root here, and is checked like any other
    if not path.is_relative_to(root):
        raise InvalidInputError(f"LoRA path {str(requested)!r} is outside the LoRA directory; give a path inside it")
    return path


def read_lora_file(path: str | Path) -> LoRAFile:
    """Reads a LoRA safetensors file in the Diffusers/PEFT or kohya/ComfyUI layout, checking every pair's shapes."""
    path = Path(path)
    tensors, metadata = _load_safetensors(path)
    configs = _adapter_configs(path, metadata)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = []
    for key, tensor in tensors.items():
        suffix = next((suffix for suffix in KEY_SUFFIXES if key.endswith(suffix)), None)
        if suffix is None:
            unsupported.append(key)  # DoRA scales, bias diffs, norm weights: not a low-rank pair
            continue
        groups.setdefault(key.removesuffix(suffix), {})[KEY_SUFFIXES[suffix]] = tensor
    modules = []
    for key, parts in groups.items():
        if parts.keys() == {"alpha"}:
            unsupported.append(f"{key}.alpha")
            continue
        component, name = _split_component(key)
        down, up = _checked_pair(path, key, parts)
        scale = _scale(path, key, parts.get("alpha"), configs.get(component, {}), name, down.shape[0])
        modules.append(LoRAModule(key, component, name, LoRAWeights(down, up, scale)))
    if not modules:
        raise ModelLoadError(
            f"{path} holds no LoRA weights: expected keys ending in .lora_A.weight/.lora_B.weight "
            f"or .lora_down.weight/.lora_up.weight, found e.g. {sorted(tensors)[:3]}"
        )
    return LoRAFile(path, modules, sorted(unsupported))


def match_modules(modules: list[LoRAModule], model: nn.Module, family: str) -> tuple[dict[str, LoRAWeights], list[str]]:
    """Maps `modules` onto `model`'s linear layers: {our module path: weights}, and the keys that match none.

    `family` is the DiT class whose original names may appear (a key of `ORIGINAL_NAMES`); "" for text encoders.
    """
    linears = {path: module for path, module in model.named_modules() if isinstance(module, nn.Linear)}
    flattened = {path.replace(".", "_"): path for path in linears}
    matched: dict[str, LoRAWeights] = {}
    unmatched = []
    for module in modules:
        paths = _our_paths(module.name, linears, flattened, ORIGINAL_NAMES.get(family, {}))
        if paths is None:
            unmatched.append(module.key)
            continue
        ups = _split_rows(module, [full_features(linears[path])[1] for path in paths])
        for path, up in zip(paths, ups, strict=True):
            _check_fits(module, path, linears[path], up)
            matched[path] = dataclasses.replace(module.weights, up=up)
    return matched, unmatched


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise InvalidInputError(f"LoRA file {path} does not exist")
    try:
        with safe_open(path, framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{path} is not a readable safetensors LoRA file ({error})") from None


def _adapter_configs(path: Path, metadata: dict[str, str]) -> dict[str, dict]:
    """Diffusers' `lora_adapter_metadata` ({"transformer.lora_alpha": 8, ...}) as {component: peft config}."""
    if "lora_adapter_metadata" not in metadata:
        return {}
    try:
        flat = json.loads(metadata["lora_adapter_metadata"])
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path}: lora_adapter_metadata is not valid JSON ({error})") from None
    configs: dict[str, dict] = {}
    for component, prefix in METADATA_PREFIXES.items():
        config = {key.removeprefix(f"{prefix}."): value for key, value in flat.items() if key.startswith(f"{prefix}.")}
        if config.get("use_dora"):
            raise ModelLoadError(f"{path} is a DoRA adapter ({prefix}); Easel applies plain LoRA only")
        configs[component] = config
    return configs


def _split_component(key: str) -> tuple[str, str]:
    for prefix, component in COMPONENT_PREFIXES:
        if key.startswith(prefix):
            return component, key.removeprefix(prefix)
    return DIT, key  # bare module paths: the DiT's, as some trainers save them


def _checked_pair(path: Path, key: str, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    for part, names in (("down", "lora_A/lora_down"), ("up", "lora_B/lora_up")):
        if part not in parts:
            raise ModelLoadError(f"{path}: {key} has no {names} weight; the file is incomplete")
        if parts[part].dim() != 2:
            raise ModelLoadError(
                f"{path}: {key}'s {names} weight has shape {tuple(parts[part].shape)}; Easel applies LoRA to "
                "linear layers only (2-D weights)"
            )
    down, up = parts["down"], parts["up"]
    if down.shape[0] != up.shape[1]:
        raise ModelLoadError(
            f"{path}: rank mismatch in {key}: lora_A/lora_down has rank {down.shape[0]} "
            f"({tuple(down.shape)}) but lora_B/lora_up has rank {up.shape[1]} ({tuple(up.shape)})"
        )
    return down, up


def _scale(path: Path, key: str, alpha: torch.Tensor | None, config: dict, name: str, rank: int) -> float:
    """alpha / rank, with alpha from the module's `.alpha`, else the adapter metadata, else the rank itself."""
    if alpha is not None:
        if alpha.numel() != 1:
            raise ModelLoadError(f"{path}: {key}.alpha should be one number, has shape {tuple(alpha.shape)}")
        value = float(alpha.item())
    else:
        # As peft reads a pattern: the first that matches the module path or a suffix of it at a ".".
        patterns = config.get("alpha_pattern", {}).items()
        pattern = next((v for k, v in patterns if re.match(rf"(.*\.)?({k})$", name)), None)
        value = float(pattern if pattern is not None else config.get("lora_alpha", rank))
    return value / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _our_paths(
    name: str, linears: dict[str, nn.Module], flattened: dict[str, str], original_names: dict[str, tuple[str, ...]]
) -> tuple[str, ...] | None:
    if name in linears:
        return (name,)
    flat = name.replace(".", "_")
    if flat in flattened:
        return (flattened[flat],)
    for pattern, templates in original_names.items():
        if match := re.fullmatch(pattern, flat):
            paths = tuple(match.expand(template) for template in templates)
            return paths if all(path in linears for path in paths) else None
    return None


def _split_rows(module: LoRAModule, sizes: list[int]) -> list[torch.Tensor]:
    """A fused layer's lora_up, cut into the rows of each of our layers."""
    up = module.weights.up
    if len(sizes) > 1 and sum(sizes) != up.shape[0]:
        raise ModelLoadError(
            f"{module.key}: lora_up has {up.shape[0]} rows but the {len(sizes)} layers it splits into "
            f"have {sum(sizes)} outputs ({sizes}); the LoRA was made for another model size"
        )
    return list(torch.split(up, sizes)) if len(sizes) > 1 else [up]


def _check_fits(module: LoRAModule, path: str, linear: nn.Linear, up: torch.Tensor) -> None:
    down = module.weights.down
    in_features, out_features = full_features(linear)  # a tensor-parallel layer's whole width: the file's
    if down.shape[1] != in_features or up.shape[0] != out_features:
        raise ModelLoadError(
            f"{module.key} does not fit {path}: the LoRA maps {down.shape[1]} -> {up.shape[0]} features, the "
            f"layer {in_features} -> {out_features}; the LoRA was made for another model"
        )
