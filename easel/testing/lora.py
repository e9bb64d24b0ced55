"""Random LoRA files for a tiny pipeline folder, in the layouts people publish, built offline.

"peft" is the Diffusers/PEFT layout (`transformer.<module path>.lora_A.weight`), with per-layer ranks and alphas as
`.alpha` keys or in Diffusers' `lora_adapter_metadata`. "kohya" is the kohya/ComfyUI layout (`lora_unet_<name>.
lora_down.weight`, `.alpha`) under the names each family's kohya-style trainers write and Diffusers converts: BFL's
module names for FLUX (fused qkv), musubi-tuner's for Wan, Diffusers' own names flattened for Qwen-Image.
"""

import json
import os
import pathlib
from typing import Literal

import diffusers
import torch
import transformers
from safetensors.torch import save_file
from torch import nn

from easel.testing.seeding import seeded

# The LoRA update's std relative to the weight's it adapts: large enough that a strength change moves the pixels
# by well over the parity tolerance, as a trained LoRA does.
LORA_GAIN = 0.5


def flux_kohya_names(transformer: nn.Module) -> dict[str, list[str]]:
    """BFL names (as kohya's sd-scripts writes them) -> the Diffusers layers each one covers, fused ones split."""
    # stream -> Diffusers' names for its q/k/v projections, attention output, MLP and modulation
    streams = {
        "img": ("to_{}", "to_out.0", "ff", "norm1"),
        "txt": ("add_{}_proj", "to_add_out", "ff_context", "norm1_context"),
    }
    names = {}
    for i in range(len(transformer.transformer_blocks)):
        block = f"transformer_blocks.{i}"
        for stream, (qkv, proj, ff, norm) in streams.items():
            prefix = f"lora_unet_double_blocks_{i}_{stream}"
            names[f"{prefix}_attn_qkv"] = [f"{block}.attn.{qkv.format(x)}" for x in "qkv"]
            names[f"{prefix}_attn_proj"] = [f"{block}.attn.{proj}"]
            names[f"{prefix}_mlp_0"] = [f"{block}.{ff}.net.0.proj"]
            names[f"{prefix}_mlp_2"] = [f"{block}.{ff}.net.2"]
            names[f"{prefix}_mod_lin"] = [f"{block}.{norm}.linear"]
    for i in range(len(transformer.single_transformer_blocks)):
        # No linear1 (fused qkv + mlp): Diffusers splits it at FLUX.1's full-size widths only.
        names[f"lora_unet_single_blocks_{i}_linear2"] = [f"single_transformer_blocks.{i}.proj_out"]
        names[f"lora_unet_single_blocks_{i}_modulation_lin"] = [f"single_transformer_blocks.{i}.norm.linear"]
    return names


def flux2_kohya_names(transformer: nn.Module) -> dict[str, list[str]]:
    """BFL's FLUX.2 names, flattened as kohya-style trainers write them -> Diffusers layers (qkv fused per stream)."""
    streams = {"img": ("to_{}", "to_out.0", "ff"), "txt": ("add_{}_proj", "to_add_out", "ff_context")}
    names = {}
    for i in range(len(transformer.transformer_blocks)):
        block = f"transformer_blocks.{i}"
        for stream, (qkv, proj, ff) in streams.items():
            prefix = f"lora_unet_double_blocks_{i}_{stream}"
            names[f"{prefix}_attn_qkv"] = [f"{block}.attn.{qkv.format(x)}" for x in "qkv"]
            names[f"{prefix}_attn_proj"] = [f"{block}.attn.{proj}"]
            names[f"{prefix}_mlp_0"] = [f"{block}.{ff}.linear_in"]
            names[f"{prefix}_mlp_2"] = [f"{block}.{ff}.linear_out"]
    for i in range(len(transformer.single_transformer_blocks)):
        names[f"lora_unet_single_blocks_{i}_linear1"] = [f"single_transformer_blocks.{i}.attn.to_qkv_mlp_proj"]
        names[f"lora_unet_single_blocks_{i}_linear2"] = [f"single_transformer_blocks.{i}.attn.to_out"]
    return names


def wan_kohya_names(transformer: nn.Module) -> dict[str, list[str]]:
    """musubi-tuner's names (Wan's original code, flattened) -> Diffusers layers; it writes every block's layers."""
    names = {}
    for i in range(len(transformer.blocks)):
        for original, ours in (("self_attn", "attn1"), ("cross_attn", "attn2")):
            for x in "qkv":
                names[f"lora_unet_blocks_{i}_{original}_{x}"] = [f"blocks.{i}.{ours}.to_{x}"]
            names[f"lora_unet_blocks_{i}_{original}_o"] = [f"blocks.{i}.{ours}.to_out.0"]
        names[f"lora_unet_blocks_{i}_ffn_0"] = [f"blocks.{i}.ffn.net.0.proj"]
        names[f"lora_unet_blocks_{i}_ffn_2"] = [f"blocks.{i}.ffn.net.2"]
    return names


def qwen_image_kohya_names(transformer: nn.Module) -> dict[str, list[str]]:
    """Qwen-Image kohya files flatten Diffusers' own module paths."""
    return {f"lora_unet_{path.replace('.', '_')}": [path] for path in _linear_paths(transformer)}


KOHYA_NAMES = {
    "FluxTransformer2DModel": flux_kohya_names,
    "Flux2Transformer2DModel": flux2_kohya_names,
    "WanTransformer3DModel": wan_kohya_names,
    "QwenImageTransformer2DModel": qwen_image_kohya_names,
}


def build_lora_file(
    folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    layout: Literal["peft", "kohya"],
    alphas: Literal["keys", "metadata", "none"] = "keys",
    seed: int = 0,
    rank: int = 4,
    text_encoder: bool = False,
) -> pathlib.Path:
    """Writes a random LoRA for the DiT of the pipeline at `folder` (and its first text encoder) at `path`.

    Ranks alternate between `rank` and `rank // 2` over the layers, alphas between 0.5, 1 and 1.5 times the rank:
    as `.alpha` keys ("keys", and always in kohya files), in Diffusers' adapter metadata ("metadata"), or not at all
    ("none": alpha is the rank). `text_encoder` adds every linear layer of `text_encoder` (kohya: `lora_te1_...`).
    """
    tensors: dict[str, torch.Tensor] = {}
    ranks, alpha_values = {}, {}
    kohya = layout == "kohya"
    with seeded(seed):
        for index, (name, layers) in enumerate(_file_modules(pathlib.Path(folder), kohya, text_encoder).items()):
            layer_rank, alpha_ratio = (rank if index % 2 == 0 else rank // 2), (1 + index % 3) / 2
            if alphas == "metadata" and "." not in name.removeprefix("transformer."):
                # peft reads a pattern as a suffix at a ".": one for a top-level "proj_out" would hit each block's.
                layer_rank, alpha_ratio = rank, 0.5
            alpha = layer_rank * alpha_ratio
            down = torch.randn(layer_rank, layers[0].in_features)
            up = torch.randn(sum(layer.out_features for layer in layers), layer_rank)
            up *= LORA_GAIN * layers[0].weight.std().item() / layer_rank**0.5  # up @ down: the weight's std x gain
            a, b = ("lora_down", "lora_up") if kohya else ("lora_A", "lora_B")
            tensors[f"{name}.{a}.weight"], tensors[f"{name}.{b}.weight"] = down, up
            if alphas == "keys" or kohya:
                tensors[f"{name}.alpha"] = torch.tensor(alpha)
            if name.startswith("transformer."):
                ranks[name.removeprefix("transformer.")] = layer_rank
                alpha_values[name.removeprefix("transformer.")] = alpha
    metadata = {"format": "pt"}
    if alphas == "metadata" and not kohya:
        metadata["lora_adapter_metadata"] = json.dumps(_adapter_config(ranks, alpha_values, rank))
    output = pathlib.Path(path)
    save_file(tensors, output, metadata=metadata)
    return output


def _file_modules(folder: pathlib.Path, kohya: bool, text_encoder: bool) -> dict[str, list[nn.Linear]]:
    """{module name in the file: the layers it covers (several for a fused layer)}."""
    transformer = _load(diffusers, folder / "transformer")
    if kohya:
        names = KOHYA_NAMES[type(transformer).__name__](transformer)
    else:
        names = {f"transformer.{path}": [path] for path in _linear_paths(transformer)}
    modules = {name: [transformer.get_submodule(path) for path in paths] for name, paths in names.items()}
    if text_encoder:
        encoder = _load(transformers, folder / "text_encoder")
        for path in _linear_paths(encoder):
            name = f"lora_te1_{path.replace('.', '_')}" if kohya else f"text_encoder.{path}"
            modules[name] = [encoder.get_submodule(path)]
    return modules


def _adapter_config(ranks: dict[str, int], alphas: dict[str, float], rank: int) -> dict:
    """The DiT's adapter config as Diffusers writes it: the common rank and alpha, the others as patterns."""
    alpha = rank / 2
    return {
        "transformer.r": rank,
        "transformer.lora_alpha": alpha,
        "transformer.rank_pattern": {name: r for name, r in ranks.items() if r != rank},
        "transformer.alpha_pattern": {name: a for name, a in alphas.items() if a != alpha},
        "transformer.target_modules": sorted(ranks),
    }


def _load(library, folder: pathlib.Path) -> nn.Module:
    config = json.loads((folder / "config.json").read_text())
    class_name = config.get("_class_name") or config["architectures"][0]  # Diffusers, or transformers
    return getattr(library, class_name).from_pretrained(folder)


def _linear_paths(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
