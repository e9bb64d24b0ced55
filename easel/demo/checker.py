"""The judge of the demo's images: which background, and which colour, shape, size and position each shape shows.

Plain image analysis, since the scenes are flat colours: the background is the colour of the border, a shape is the
pixels of one named colour far from it, its shape is the template (circle, square, triangle) that best fills its
bounding box, its position the anchor nearest the box's centre and its size the box's side.
"""

import dataclasses

import numpy as np
from PIL import Image

from easel.demo.scenes import COLOURS, POSITIONS, SIZES, Scene, Shape, parse_prompt

ATTRIBUTES = ("colour", "shape", "size", "position", "background")

_COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _COLOUR_NAMES], dtype=np.float32)
_BORDER = 2  # pixels of each edge that show only background in every scene
_FOREGROUND_DISTANCE = 80.0  # RGB distance (0..255 scale) from the background beyond which a pixel is a shape's
_MIN_SHAPE_FRACTION = 0.01  # a colour covering fewer pixels of the image is stray edge pixels, not a shape
_SIZE_THRESHOLD = sum(SIZES.values()) / len(SIZES)  # between the small and the large box side


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What an image shows: its background and its shapes, the largest first."""

    background: str
    shapes: tuple[Shape, ...]


def judge(image: Image.Image | np.ndarray) -> Verdict:
    """Reads an RGB image (PIL, uint8 array, or float array in 0..1) and says what it shows."""
    pixels = _as_rgb_array(image)
    border = np.concatenate(
        [pixels[:_BORDER].reshape(-1, 3), pixels[-_BORDER:].reshape(-1, 3)]
        + [pixels[:, :_BORDER].reshape(-1, 3), pixels[:, -_BORDER:].reshape(-1, 3)]
    )
    background_rgb = np.median(border, axis=0)
    background = _COLOUR_NAMES[_nearest_colour(background_rgb[None])[0]]
    foreground = np.linalg.norm(pixels - background_rgb, axis=-1) > _FOREGROUND_DISTANCE
    labels = _nearest_colour(pixels.reshape(-1, 3)).reshape(pixels.shape[:2])
    shapes = []
    for index, name in enumerate(_COLOUR_NAMES):
        mask = _without_stray_pixels(foreground & (labels == index))
        if name != background and mask.mean() >= _MIN_SHAPE_FRACTION:
            shapes.append((int(mask.sum()), _describe(name, mask)))
    shapes.sort(key=lambda found: -found[0])
    return Verdict(background, tuple(shape for _, shape in shapes))


def score(verdict: Verdict, prompt: str | Scene) -> dict[str, bool]:
    """Whether the verdict shows each attribute the prompt states; a prompted shape is looked for by its colour
    (one-shape prompts: the largest shape found), and an attribute of several shapes is right if all are."""
    scene = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    results: dict[str, bool] = {}
    for wanted in scene.shapes:
        found = _match(verdict, wanted, single=len(scene.shapes) == 1)
        for attribute in ("colour", "shape", "size", "position"):
            if getattr(wanted, attribute) is not None:
                right = found is not None and getattr(found, attribute) == getattr(wanted, attribute)
                results[attribute] = results.get(attribute, True) and right
    if scene.background is not None:
        results["background"] = verdict.background == scene.background
    return results


def _match(verdict: Verdict, wanted: Shape, single: bool) -> Shape | None:
    if single:
        return verdict.shapes[0] if verdict.shapes else None
    return next((shape for shape in verdict.shapes if shape.colour == wanted.colour), None)


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in 0..255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image)
    return array.astype(np.float32) * (255.0 if array.dtype.kind == "f" else 1.0)


def _nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into `_COLOUR_NAMES` of the named colour nearest each (N, 3) RGB value."""
    return np.argmin(np.linalg.norm(rgb[:, None, :] - _PALETTE[None], axis=-1), axis=1)


def _without_stray_pixels(mask: np.ndarray) -> np.ndarray:
    """Keeps the pixels with at least 4 of their 8 neighbours in the mask: anti-aliased edges between two other
    colours can look like a thin line of a third one, which this removes."""
    padded = np.pad(mask, 1).astype(np.int8)
    height, width = mask.shape
    neighbours = sum(
        padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    )
    return mask & (neighbours >= 4)


def _describe(colour: str, mask: np.ndarray) -> Shape:
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = mask.shape
    centre = np.array([(left + right) / 2 / width, (top + bottom) / 2 / height])
    position = min(POSITIONS, key=lambda name: np.linalg.norm(centre - np.array(POSITIONS[name])))
    size = "small" if max(bottom - top, right - left) < _SIZE_THRESHOLD else "large"
    crop = mask[top:bottom, left:right]
    shape = max(_TEMPLATES, key=lambda name: _iou(crop, _TEMPLATES[name](*crop.shape)))
    return Shape(colour, shape, size, position)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of each pixel's centre in a box of the given size, both in 0..1."""
    y = (np.arange(height)[:, None] + 0.5) / height
    x = (np.arange(width)[None, :] + 0.5) / width
    return y, x


def _circle(height: int, width: int) -> np.ndarray:
    y, x = _pixel_centres(height, width)
    return (y - 0.5) ** 2 + (x - 0.5) ** 2 <= 0.25


def _square(height: int, width: int) -> np.ndarray:
    return np.ones((height, width), dtype=bool)


def _triangle(height: int, width: int) -> np.ndarray:
    """Pointing up, as the scenes draw it: at height y (0 at the apex) it is y wide."""
    y, x = _pixel_centres(height, width)
    return np.abs(x - 0.5) <= y / 2


_TEMPLATES = {"circle": _circle, "square": _square, "triangle": _triangle}
