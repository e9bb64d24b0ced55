"""Reading the input images of image-conditioned models, with errors that say which file is wrong."""

from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from easel.errors import InvalidInputError


def as_list(image: Any) -> list:
    """The input images as a list: None is none, a single path or image is one."""
    if image is None:
        return []
    return list(image) if isinstance(image, list | tuple) else [image]


def load_images(image: Any, mode: str = "RGB") -> list[Image.Image]:
    """Images in PIL `mode` (RGB, or RGBA for models that read transparency) from a path, a PIL image, or a list."""
    return [_load_one(item, mode) for item in as_list(image)]


def _load_one(item: Any, mode: str) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert(mode)
    if not isinstance(item, str | Path):
        raise InvalidInputError(f"an input image must be a file path or a PIL image, got {type(item).__name__}")
    path = Path(item).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"input image {path} does not exist")
    try:
        with Image.open(path) as opened:
            return opened.convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"input image {path} is not an image that can be read ({error})") from None
