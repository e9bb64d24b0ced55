"""The judge of the demo's images: which background, and which colour, shape, size and position each shape shows.

Plain image analysis, since the scenes are flat colours: the background is the colour of the border, a shape is the
pixels of one named colour far from it, its shape is told by how it fills its bounding box (a triangle's area lies
low, a square fills the corners a circle leaves), its position is the anchor nearest the box's centre and its size the
box's side.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

from easel.demo.scenes import COLOURS, POSITIONS, SIZES, Scene, Shape, nearest_colour, parse_prompt

ATTRIBUTES = ("colour", "shape", "size", "position", "background")

_COLOUR_NAMES = tuple(COLOURS)
_BORDER = 2  # pixels of each edge read for the background (a large shape reaches the inner one, along a part)
_FOREGROUND_DISTANCE = 80.0  # RGB distance (0..255 scale) from the background beyond which a pixel is a shape's
_MIN_SHAPE_FRACTION = 0.01  # a colour covering fewer pixels of the image is stray edge pixels, not a shape
# A shape fills at least half its bounding box (a triangle, half); a colour filling much less of its box is the thin
# anti-aliased rim between a shape and the background (yellow on blue reads as a gray ring), not a shape.
_MIN_BOX_FILL = 0.3
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
    background = _COLOUR_NAMES[nearest_colour(background_rgb[None])[0]]
    foreground = np.linalg.norm(pixels - background_rgb, axis=-1) > _FOREGROUND_DISTANCE
    labels = nearest_colour(pixels.reshape(-1, 3)).reshape(pixels.shape[:2])
    shapes = []
    for index, name in enumerate(_COLOUR_NAMES):
        mask = _without_stray_pixels(foreground & (labels == index))
        if name != background and mask.mean() >= _MIN_SHAPE_FRACTION and _box_fill(mask) >= _MIN_BOX_FILL:
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


def attribute_accuracy(images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str]) -> dict[str, float]:
    """Per attribute, the fraction of images showing their prompt's, over the images whose prompt states it."""
    right: dict[str, int] = {}
    counted: dict[str, int] = {}
    for image, prompt in zip(images, prompts, strict=True):
        for attribute, correct in score(judge(image), prompt).items():
            right[attribute] = right.get(attribute, 0) + correct
            counted[attribute] = counted.get(attribute, 0) + 1
    return {attribute: right[attribute] / counted[attribute] for attribute in ATTRIBUTES if attribute in counted}


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


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a non-empty mask, bottom and right exclusive."""
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def _box_fill(mask: np.ndarray) -> float:
    top, bottom, left, right = _bounding_box(mask)
    return mask.sum() / ((bottom - top) * (right - left))


def _describe(colour: str, mask: np.ndarray) -> Shape:
    top, bottom, left, right = _bounding_box(mask)
    height, width = mask.shape
    centre = np.array([(left + right) / 2 / width, (top + bottom) / 2 / height])
    position = min(POSITIONS, key=lambda name: np.linalg.norm(centre - np.array(POSITIONS[name])))
    size = "small" if max(bottom - top, right - left) < _SIZE_THRESHOLD else "large"
    return Shape(colour, _shape_of(mask[top:bottom, left:right]), size, position)


def _shape_of(crop: np.ndarray) -> str:
    """The shape of a mask cropped to its bounding box, from two proportions that blurred edges keep (matching
    templates pixel by pixel mistakes a slightly blurred small triangle for a circle)."""
    height, width = crop.shape
    upper, lower = crop[: height // 2].sum(), crop[height - height // 2 :].sum()
    if upper < 0.6 * lower:  # an upward triangle holds 1/4 of its area in its upper half; a circle or square, 1/2
        return "triangle"
    corners = ~_circle(height, width)  # the box's corners: a square fills them, a circle leaves them empty
    return "square" if crop[corners].mean() > 0.5 else "circle"


def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of each pixel's centre in a box of the given size, both in 0..1."""
    y = (np.arange(height)[:, None] + 0.5) / height
    x = (np.arange(width)[None, :] + 0.5) / width
    return y, x


def _circle(height: int, width: int) -> np.ndarray:
    y, x = _pixel_centres(height, width)
    return (y - 0.5) ** 2 + (x - 0.5) ** 2 <= 0.25
