"""Turning decoded pixels into what the caller asked for, and writing image and video files without leaving
partial ones."""

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easel.errors import InvalidInputError

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
VIDEO_FORMATS = {".mp4"}
Video = list[Image.Image]  # the frames of one video


def to_numpy(pixels: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) or, for videos, (B, C, F, H, W) in 0..1 to a float32 array with channels last, (B, H, W, C) or
    (B, F, H, W, C), as Diffusers' `output_type="np"` gives."""
    return pixels.cpu().movedim(1, -1).float().numpy()


def to_pil(pixels: torch.Tensor) -> list[Image.Image] | list[Video]:
    """8-bit RGB (C = 3) or RGBA (C = 4) images, rounded as Diffusers rounds; for videos one list of frames each."""
    arrays = (to_numpy(pixels) * 255).round().astype("uint8")
    if pixels.dim() == 5:
        return [[Image.fromarray(frame) for frame in video] for video in arrays]
    return [Image.fromarray(image) for image in arrays]


def plan_output_paths(output_path: str | Path, count: int, prompt: str, seed: int, fmt: str = "png") -> list[Path]:
    """Where `count` images go: a file name as given (with _i suffixes for several), or generated names in a folder."""
    path = Path(output_path).expanduser()
    if path.suffix.lower() in IMAGE_FORMATS.keys() | VIDEO_FORMATS:
        if count == 1:
            return [path]
        return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]
    if f".{fmt.lower()}" not in IMAGE_FORMATS.keys() | VIDEO_FORMATS:
        raise InvalidInputError(f"unknown output format {fmt!r}; use one of png, jpeg, webp, mp4")
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


def save_outputs(outputs: list[Image.Image] | list[Video], paths: list[Path], fps: int) -> list[Path]:
    """Writes images, or videos (as MP4, or as numbered image frames when given an image path); returns the files."""
    if not outputs or isinstance(outputs[0], Image.Image):
        save_images(outputs, paths)
        return paths
    if any(path.suffix.lower() in VIDEO_FORMATS for path in paths):
        for video, path in zip(outputs, paths, strict=True):
            with Mp4Writer(path, fps) as writer:
                writer.append(video)
        return paths
    frame_paths = [
        path.with_name(f"{path.stem}_{j:03d}{path.suffix}") for path in paths for j in range(len(outputs[0]))
    ]
    save_images([frame for video in outputs for frame in video], frame_paths)
    return frame_paths


class Mp4Writer:
    """An MP4 written as its frames come (h264 in yuv420p, which every player reads), under a temporary name beside
    `path` that replaces it once complete: no half-written file is ever left, even if the frames stop coming."""

    def __init__(self, path: Path, fps: int):
        import imageio.v2 as imageio  # imported here: only videos need ffmpeg

        self.path, self.partial = path, _partial_path(path)
        # macro_block_size=1 keeps sizes that are not multiples of 16.
        self.writer = imageio.get_writer(self.partial, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)

    def append(self, frames: Video) -> None:
        for frame in frames:
            self.writer.append_data(np.asarray(frame.convert("RGB")))

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, error_type, *exc_info: object) -> None:
        self.writer.close()
        if error_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def save_images(images: list[Image.Image], paths: list[Path]) -> None:
    """Writes each image under a temporary name, then renames it, so no half-written file is ever left."""
    for image, path in zip(images, paths, strict=True):
        if image.mode == "RGBA" and IMAGE_FORMATS.get(path.suffix.lower()) == "JPEG":
            raise InvalidInputError(f"cannot write {path}: JPEG drops transparency; use .png or .webp")
    for image, path in zip(images, paths, strict=True):
        image_format = IMAGE_FORMATS.get(path.suffix.lower(), "PNG")
        _write_atomically(path, lambda partial, image=image, fmt=image_format: image.save(partial, format=fmt))


def _write_atomically(path: Path, write) -> None:
    """`write(partial)` writes a temporary file beside `path` (same extension, for writers that go by it), which then
    replaces `path`, so no half-written file is ever left."""
    partial = _partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _partial_path(path: Path) -> Path:
    """A hidden temporary name beside path, with its extension (writers go by it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.part{path.suffix}")
