"""Turning decoded pixels into what the caller asked for, and writing image files without leaving partial ones."""

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easel.errors import InvalidInputError

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def to_numpy(pixels: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in 0..1 to a float32 array (B, H, W, C), as Diffusers' `output_type="np"` gives."""
    return pixels.cpu().permute(0, 2, 3, 1).float().numpy()


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in 0..1 to 8-bit RGB (C = 3) or RGBA (C = 4) images, rounded as Diffusers rounds."""
    return [Image.fromarray(image) for image in (to_numpy(pixels) * 255).round().astype("uint8")]


def plan_output_paths(output_path: str | Path, count: int, prompt: str, seed: int, fmt: str = "png") -> list[Path]:
    """Where `count` images go: a file name as given (with _i suffixes for several), or generated names in a folder."""
    path = Path(output_path).expanduser()
    if path.suffix.lower() in IMAGE_FORMATS:
        if count == 1:
            return [path]
        return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]
    if f".{fmt.lower()}" not in IMAGE_FORMATS:
        raise InvalidInputError(f"unknown output format {fmt!r}; use one of png, jpeg, webp")
    stem = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "image"
    names = [f"{stem}_{seed}"] if count == 1 else [f"{stem}_{seed}_{i}" for i in range(count)]
    return [path / f"{name}.{fmt.lower()}" for name in names]


def check_writable(paths: list[Path]) -> None:
    """Fails before any generation work if an output file could not be written."""
    for path in paths:
        if path.is_dir():
            raise InvalidInputError(f"cannot write {path}: it is a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InvalidInputError(f"cannot create the output folder {path.parent}: {error.strerror}") from None
        if not os.access(path.parent, os.W_OK):
            raise InvalidInputError(f"cannot write into {path.parent}: permission denied")


def save_images(images: list[Image.Image], paths: list[Path]) -> None:
    """Writes each image under a temporary name, then renames it, so no half-written file is ever left."""
    for image, path in zip(images, paths, strict=True):
        if image.mode == "RGBA" and IMAGE_FORMATS.get(path.suffix.lower()) == "JPEG":
            raise InvalidInputError(f"cannot write {path}: JPEG drops transparency; use .png or .webp")
    for image, path in zip(images, paths, strict=True):
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            image.save(partial, format=IMAGE_FORMATS.get(path.suffix.lower(), "PNG"))
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
