"""Reading a component's safetensors weights: one file, or shards listed in an index."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from easel.errors import ModelLoadError


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a component folder, shards in index order."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors weights")
    return files


def load_state_dict(
    folder: Path, device: torch.device, shard: Callable[[str, Any], torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of the component, loaded straight onto `device`; with `shard(key, slice)`, only the part of each
    tensor it slices is read (a tensor-parallel rank's shard), never the whole weight."""
    state_dict: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        if not file.is_file():
            raise ModelLoadError(f"{file} is listed in the shard index but missing")
        try:
            tensors = load_file(file, device=str(device)) if shard is None else _load_shards(file, device, shard)
            state_dict.update(tensors)
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(
                f"{file} is not a readable safetensors file ({error}); it may be truncated: download it again"
            ) from None
    return state_dict


def _load_shards(
    file: Path, device: torch.device, shard: Callable[[str, Any], torch.Tensor]
) -> dict[str, torch.Tensor]:
    with safe_open(file, framework="pt") as tensors:
        return {key: shard(key, tensors.get_slice(key)).to(device) for key in tensors.keys()}
