"""How much an image shows what its caption says, measured on the pixels.

No network: each pixel takes the name of the nearest colour of the
vocabulary (or none, when no colour is near), and the object, the pixels
that are not the caption's background, is compared with the caption's
shape drawn into the object's bounding box by the same code that draws the
training images (:func:`~diffengine.demo.scenes.draw_object`).

The shape drawn has up to three regions: its inside, the hole of a ring,
and the rest of the bounding box. A region's agreement is the share of its
pixels that are what the shape says (object inside, background elsewhere),
and the match is the product of the agreements, so a disc scores 0 as a
ring (its hole is filled) and an empty image scores 0 as anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from diffengine.demo.scenes import Caption, draw_object, parse_caption
from diffengine.demo.shapes import BACKGROUNDS, COLORS, SHAPES
from diffengine.registry import SCORERS

# Region labels of a drawn shape.
OUTSIDE, INSIDE, HOLE = 0, 1, 2


@dataclass(frozen=True)
class ShapeScore:
    """The parts of an image's score against a caption, each in [0, 1].

    Attributes:
        color (float): Share of the object's pixels in the caption's colour.
        shape (float): Match of the object with the caption's shape.
        score (float): Match of the pixels in the caption's colour with the
            caption's shape: the caption's shape, in its colour.
        drawn_shape (str | None): The pretraining shape the object matches
            best, None without an object.
    """

    color: float
    shape: float
    score: float
    drawn_shape: str | None


@SCORERS.register_module()
class ShapeScorer:
    """Scores images against captions of the shapes vocabulary.

    Args:
        tolerance (float): Largest RGB distance at which a pixel takes the
            name of its nearest colour. Defaults to 70.
        min_object (float): Smallest object, as a share of the image; a
            smaller one scores 0. Defaults to 0.02.
    """

    def __init__(self, tolerance: float = 70.0,
                 min_object: float = 0.02) -> None:
        if tolerance <= 0 or not 0 <= min_object < 1:
            raise ValueError(
                f"tolerance={tolerance}, min_object={min_object}: give a "
                "tolerance > 0 and 0 <= min_object < 1.")
        self.tolerance = tolerance
        self.min_object = min_object
        self.names = list(COLORS) + [f"{b} background" for b in BACKGROUNDS]
        self.palette = np.array(list(COLORS.values()) +
                                list(BACKGROUNDS.values()), dtype=np.float32)

    def __call__(self, image: np.ndarray | Image.Image, prompt: str) -> float:
        """The caption's shape in its colour (:attr:`ShapeScore.score`)."""
        return self.score(image, prompt).score

    def labels(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """Per pixel, the index into :attr:`names` of the nearest colour,
        or -1 when none is within ``tolerance``."""
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(
                f"image of shape {pixels.shape}: give an H×W×3 RGB image.")
        if pixels.max() <= 1.0:  # float images in [0, 1]
            pixels = pixels * 255
        distances = np.linalg.norm(
            pixels[:, :, None, :] - self.palette[None, None], axis=-1)
        labels = distances.argmin(-1)
        labels[distances.min(-1) > self.tolerance] = -1
        return labels

    def score(self, image: np.ndarray | Image.Image,
              caption: str | Caption) -> ShapeScore:
        """Score ``image`` against ``caption`` (text or parsed)."""
        if isinstance(caption, str):
            caption = parse_caption(caption)
        labels = self.labels(image)
        background = labels == self.names.index(
            f"{caption.background} background")
        obj = ~background
        if obj.mean() < self.min_object:
            return ShapeScore(0.0, 0.0, 0.0, None)
        color = labels == self.names.index(caption.color)
        box = bounding_box(obj)
        matches = {s: shape_match(obj, background, s, box) for s in SHAPES}
        return ShapeScore(
            color=float((color & obj).sum() / obj.sum()),
            shape=shape_match(obj, background, caption.shape, box),
            score=shape_match(color, background, caption.shape, box),
            drawn_shape=max(matches, key=matches.get))


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of ``mask``, ignoring rows and columns that hold
    under a tenth of the fullest one's pixels (stray pixels)."""
    def extent(counts: np.ndarray) -> tuple[int, int]:
        kept = np.flatnonzero(counts >= max(1, 0.1 * counts.max()))
        return int(kept[0]), int(kept[-1])

    y0, y1 = extent(mask.sum(1))
    x0, x1 = extent(mask.sum(0))
    return x0, y0, x1, y1


def shape_regions(shape: str, box: tuple[int, int, int, int],
                  size: tuple[int, int]) -> np.ndarray:
    """An H×W map of :data:`INSIDE`, :data:`HOLE` and :data:`OUTSIDE`
    (the rest of ``box``), -1 beyond ``box``."""
    x0, y0, x1, y1 = box
    canvas = Image.new("L", size, OUTSIDE)
    draw_object(ImageDraw.Draw(canvas), shape, (x0, y0, x1 + 1, y1 + 1),
                INSIDE, HOLE)
    regions = np.asarray(canvas).astype(np.int8)
    beyond = np.ones(regions.shape, dtype=bool)
    beyond[y0:y1 + 1, x0:x1 + 1] = False
    regions[beyond] = -1
    return regions


def shape_match(obj: np.ndarray, background: np.ndarray, shape: str,
                box: tuple[int, int, int, int]) -> float:
    """Product over the regions of ``shape`` drawn in ``box`` of the share
    of their pixels that agree: ``obj`` inside, ``background`` elsewhere.

    Pixels next to another region are left out: a one-pixel difference in
    where an edge falls is drawing, not shape.
    """
    regions = shape_regions(shape, box, obj.shape[::-1])
    padded = np.pad(regions, 1, mode="edge")
    edge = np.zeros(regions.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + regions.shape[0],
                       dx:dx + regions.shape[1]] != regions
    match = 1.0
    for region, expected in ((INSIDE, obj), (HOLE, background),
                             (OUTSIDE, background)):
        pixels = (regions == region) & ~edge
        if pixels.any():
            match *= float(expected[pixels].mean())
    return match
