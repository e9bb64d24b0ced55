"""The demo's world: scenes of one or two flat shapes on a coloured background, their captions, and their split.

Everything here is deterministic: a scene renders to the same pixels and a seed draws the same scenes on any machine.
Some (colour, shape) and (shape, position) pairs are held out: training never sees them, and the held-out evaluation
prompts are made of them only, so that the quality measure also tells whether the model composes what it learned.
A colour is one of the named `COLOURS` or, in the VAE's training scenes only, any RGB value written "#rrggbb".
"""

import dataclasses
import functools
import itertools
import random
import re

import numpy as np
from PIL import Image, ImageDraw

from easel.errors import InvalidInputError

IMAGE_SIZE = 64
_SUPERSAMPLING = 4  # shapes are drawn 4x larger, then box-filtered down, for anti-aliased edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 215, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    # Four more, so that each shape is seen in many colours: a shape's look stops depending on its colour.
    "purple": (140, 40, 190),
    "cyan": (30, 200, 210),
    "pink": (245, 130, 200),
    "gray": (128, 128, 128),
}
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
SHAPES = ("circle", "square", "triangle")
# Side of the shape's bounding box, in pixels of the 64x64 image. A small shape still spans more than one DiT token
# (16 pixels): at 18 pixels the model drew most small squares and triangles as blobs (held-out shapes 36% against
# 58% at 22, same training otherwise).
SIZES: dict[str, int] = {"small": 22, "large": 30}
# Centre of the shape's bounding box, as (x, y) fractions of the image: 16 pixels apart, the side of the patch each
# DiT token covers (8x VAE, 2x2 packing), so a shape drawn at one place is the same tokens, moved, at another.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
# Words a prompt may use for an attribute besides its canonical name.
_SYNONYMS = {"center": "centre", "middle": "centre", "big": "large"}

HELD_OUT_COLOUR_SHAPES = frozenset(
    {("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle")}
)
HELD_OUT_SHAPE_POSITIONS = frozenset({("circle", "top"), ("square", "right")})

# Two shapes share a scene only where they cannot overlap.
_PAIRED_POSITIONS = (("left", "right"), ("top", "bottom"))
_JITTER = 2  # pixels by which a VAE training scene may move a shape or change its size
# RGB distance (0..255 scale) that a random colour keeps from its background and from the other shape's colour.
_MIN_COLOUR_DISTANCE = 100.0


@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape of a scene; `size` or `position` is None where a prompt does not state it."""

    colour: str
    shape: str
    size: str | None = None
    position: str | None = None


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a prompt asks for: its shapes, and its background colour (None where it does not say)."""

    shapes: tuple[Shape, ...]
    background: str | None = None


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into `COLOURS` of the named colour nearest each (N, 3) RGB value."""
    return np.argmin(np.linalg.norm(rgb[:, None, :] - _PALETTE[None], axis=-1), axis=1)


def rgb(colour: str) -> tuple[int, int, int]:
    """The RGB value of a named colour or of a "#rrggbb" one."""
    if colour.startswith("#"):
        return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return COLOURS[colour]


def colour_name(colour: str) -> str:
    """The named colour a colour is seen as: itself, or the nearest to its RGB value."""
    if colour in COLOURS:
        return colour
    return list(COLOURS)[nearest_colour(np.array([rgb(colour)], dtype=np.float32))[0]]


def is_held_out(shape: Shape) -> bool:
    """Whether the shape uses a combination that training never sees (a random colour counts as its nearest name)."""
    return (colour_name(shape.colour), shape.shape) in HELD_OUT_COLOUR_SHAPES or (
        shape.shape,
        shape.position,
    ) in HELD_OUT_SHAPE_POSITIONS


def caption(scene: Scene, centre_word: str = "centre") -> str:
    """The prompt of a scene: "a small red circle on the left, on a blue background"."""
    phrases = []
    for shape in scene.shapes:
        words = ["a", shape.size, shape.colour, shape.shape]
        if shape.position is not None:
            words.append(_POSITION_PHRASES.get(shape.position, f"in the {centre_word}"))
        phrases.append(" ".join(word for word in words if word is not None))
    text = " and ".join(phrases)
    return text if scene.background is None else f"{text}, on a {scene.background} background"


def parse_prompt(prompt: str) -> Scene:
    """The scene a prompt describes, read word by word; raises InvalidInputError if it names no colour and shape."""
    text = prompt.lower()
    background = None
    if match := re.search(r"\b(\w+) background\b", text):
        background = _SYNONYMS.get(match.group(1), match.group(1))
        background = background if background in COLOURS else None
        text = text[: match.start()] + text[match.end() :]
    shapes = tuple(_parse_shape(part) for part in re.split(r"\band\b", text) if _names_shape(part))
    if not shapes or any(shape.colour is None for shape in shapes):
        raise InvalidInputError(
            f"cannot read a scene from {prompt!r}: name a colour ({', '.join(COLOURS)}) and a shape "
            f"({', '.join(SHAPES)}) for each object"
        )
    return Scene(shapes, background)


def _names_shape(text: str) -> bool:
    return any(word in SHAPES for word in _words(text))


def _words(text: str) -> list[str]:
    return [_SYNONYMS.get(word, word) for word in re.findall(r"[a-z]+", text)]


def _parse_shape(text: str) -> Shape:
    words = _words(text)

    def first(names) -> str | None:
        return next((word for word in words if word in names), None)

    return Shape(first(COLOURS), first(SHAPES), first(SIZES), first(POSITIONS))


def render(scene: Scene, rng: random.Random | None = None) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 image; with `rng`, each shape moves and resizes by up to 2 pixels."""
    if scene.background is None or any(s.size is None or s.position is None for s in scene.shapes):
        raise InvalidInputError("only a fully specified scene (every size, position and the background) renders")
    scale = _SUPERSAMPLING
    canvas = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), rgb(scene.background))
    draw = ImageDraw.Draw(canvas)
    for shape in scene.shapes:
        dx, dy, dsize = (rng.randint(-_JITTER, _JITTER) for _ in range(3)) if rng else (0, 0, 0)
        fx, fy = POSITIONS[shape.position]
        half = (SIZES[shape.size] + dsize) * scale / 2
        cx, cy = (fx * IMAGE_SIZE + dx) * scale, (fy * IMAGE_SIZE + dy) * scale
        box = (cx - half, cy - half, cx + half, cy + half)
        colour = rgb(shape.colour)
        if shape.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape.shape == "square":
            draw.rectangle(box, fill=colour)
        else:  # a triangle pointing up, filling its box's width and height
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


@functools.cache
def single_shape_scenes() -> tuple[Scene, ...]:
    """Every fully specified one-shape scene (the background differs from the shape), in a fixed order."""
    return tuple(
        Scene((Shape(colour, shape, size, position),), background)
        for colour, shape, size, position, background in itertools.product(COLOURS, SHAPES, SIZES, POSITIONS, COLOURS)
        if background != colour
    )


@functools.cache
def training_scenes() -> tuple[Scene, ...]:
    """The one-shape scenes training may use: those of no held-out combination."""
    return tuple(scene for scene in single_shape_scenes() if not is_held_out(scene.shapes[0]))


@functools.cache
def held_out_scenes() -> tuple[Scene, ...]:
    """The one-shape scenes training never sees."""
    return tuple(scene for scene in single_shape_scenes() if is_held_out(scene.shapes[0]))


def evaluation_prompts(held_out: bool, count: int = 100) -> list[str]:
    """A fixed list of one-shape prompts, drawn (seed 0) from the held-out scenes or the training ones."""
    scenes = held_out_scenes() if held_out else training_scenes()
    return [caption(scene) for scene in random.Random(0).sample(scenes, count)]


def sample_training_scene(rng: random.Random, two_shape_fraction: float) -> Scene:
    """A random scene of training combinations only: one shape, or two of different colours at opposite places."""
    if rng.random() >= two_shape_fraction:
        return rng.choice(training_scenes())
    positions = rng.choice(_PAIRED_POSITIONS)
    while True:
        shapes = tuple(
            Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES)), position)
            for position in positions
        )
        background = rng.choice(list(COLOURS))
        colours = {shape.colour for shape in shapes}
        if len(colours) == 2 and background not in colours and not any(map(is_held_out, shapes)):
            return Scene(shapes, background)


def sample_vae_scene(rng: random.Random) -> Scene:
    """A scene for the VAE alone, which reads no caption: a training scene half the time, else one or two shapes of
    random colours on a random background. Seeing shapes in every colour, the VAE learns to code a shape and its
    colour apart, so that it also draws the held-out pairs, whose colours it must not see on those shapes."""
    if rng.random() < 0.5:
        return sample_training_scene(rng, two_shape_fraction=0.15)
    while True:
        background, *colours = (f"#{rng.randrange(256**3):06x}" for _ in range(3))
        places = [rng.choice(list(POSITIONS))] if rng.random() < 0.85 else rng.choice(_PAIRED_POSITIONS)
        shapes = tuple(
            Shape(colour, rng.choice(SHAPES), rng.choice(list(SIZES)), place)
            for colour, place in zip(colours, places, strict=False)
        )
        if _far_apart([background, *(shape.colour for shape in shapes)]) and not any(map(is_held_out, shapes)):
            return Scene(shapes, background)


def _far_apart(colours: list[str]) -> bool:
    """Whether every two of the colours are at least `_MIN_COLOUR_DISTANCE` apart."""
    values = np.array([rgb(colour) for colour in colours], dtype=np.float32)
    distances = np.linalg.norm(values[:, None] - values[None], axis=-1)
    return bool(distances[~np.eye(len(colours), dtype=bool)].min() >= _MIN_COLOUR_DISTANCE)


def training_caption(scene: Scene, rng: random.Random) -> str:
    """A caption of the scene as people write them: "centre" or "center", and sometimes without size, position
    or background (the picture still has them, so the model learns to choose one itself)."""
    shapes = tuple(
        dataclasses.replace(
            shape,
            size=None if rng.random() < 0.1 else shape.size,
            position=None if len(scene.shapes) == 1 and rng.random() < 0.1 else shape.position,
        )
        for shape in scene.shapes
    )
    background = None if rng.random() < 0.1 else scene.background
    return caption(Scene(shapes, background), centre_word=rng.choice(("centre", "center")))
