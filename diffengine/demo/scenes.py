"""Procedurally drawn images: the demo base's pretraining data and the
concept held out of it.

Three kinds of image, all 64 px by default and drawn with PIL:

- *scenes* (:func:`draw_scene`), one to three objects of any shape, colour
  and size on any background, some overlapping: what the VAE learns to
  encode, so that it encodes flat shapes in general;
- *captioned shapes* (:func:`draw_captioned`), one shape of the caption
  vocabulary ("a red circle on a white background", see
  :mod:`diffengine.demo.shapes`): what the UNet and the text encoder learn
  to draw;
- the *concept* (:data:`CONCEPT_WORD`, a ring), which neither the
  captions nor the word ever showed the UNet: what the demo's LoRA learns
  (:func:`make_concept_dataset`).
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from diffengine.demo.shapes import BACKGROUNDS, COLORS, SHAPES

# The held-out concept: a ring, named by a word no caption contains.
CONCEPT_WORD = "zorb"
CONCEPT_SHAPE = "ring"
# Inner over outer diameter of a ring.
RING_HOLE = 0.5
# Every shape the drawing and the scorer know, with the word that names it.
SHAPE_OF_WORD = {**{s: s for s in SHAPES}, CONCEPT_WORD: CONCEPT_SHAPE}

Box = tuple[float, float, float, float]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Caption:
    """The parts of a caption "a {color} {shape word} on a {background}
    background"."""

    color: str
    word: str
    background: str

    @property
    def shape(self) -> str:
        """The shape the word names (``"ring"`` for the concept word)."""
        return SHAPE_OF_WORD[self.word]

    def text(self) -> str:
        return f"a {self.color} {self.word} on a {self.background} background"


def parse_caption(text: str) -> Caption:
    """Read a caption of the shapes vocabulary.

    Raises:
        ValueError: If ``text`` is not "a {color} {shape} on a {background}
            background" with words of the vocabulary; the message names the
            words it knows.
    """
    words = text.strip().split()
    if (len(words) == 7 and words[0] == "a" and words[3:5] == ["on", "a"]
            and words[6] == "background" and words[1] in COLORS
            and words[2] in SHAPE_OF_WORD and words[5] in BACKGROUNDS):
        return Caption(words[1], words[2], words[5])
    raise ValueError(
        f"{text!r} is not 'a COLOR SHAPE on a BACKGROUND background' with "
        f"COLOR in {sorted(COLORS)}, SHAPE in {sorted(SHAPE_OF_WORD)} and "
        f"BACKGROUND in {sorted(BACKGROUNDS)}.")


def pretraining_captions() -> list[Caption]:
    """Every caption of the pretraining vocabulary (the concept excluded)."""
    return [Caption(color, shape, background) for shape in SHAPES
            for color in COLORS for background in BACKGROUNDS]


def draw_object(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill,
                hole_fill) -> None:
    """Draw a filled ``shape`` into ``box`` (x0, y0, x1, y1).

    ``hole_fill`` fills the hole of a ring; ``fill`` and ``hole_fill`` are
    RGB tuples, or 1 and 0 on a mask.
    """
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == CONCEPT_SHAPE:
        draw.ellipse(box, fill=fill)
        inset_x = (x1 - x0) * (1 - RING_HOLE) / 2
        inset_y = (y1 - y0) * (1 - RING_HOLE) / 2
        draw.ellipse((x0 + inset_x, y0 + inset_y, x1 - inset_x, y1 - inset_y),
                     fill=hole_fill)
    else:
        raise ValueError(f"shape={shape!r}; known: "
                         f"{sorted(set(SHAPE_OF_WORD.values()))}.")


def random_box(rng: random.Random, size: int, low: float = 0.45,
               high: float = 0.7) -> Box:
    """A square box of side ``low``..``high`` × ``size`` inside the image,
    as :func:`diffengine.demo.shapes.draw_shape` places its shapes."""
    extent = rng.uniform(low, high) * size
    x0 = rng.uniform(0, size - extent)
    y0 = rng.uniform(0, size - extent)
    return (x0, y0, x0 + extent, y0 + extent)


def draw_captioned(caption: Caption, size: int,
                   rng: random.Random) -> Image.Image:
    """The image of ``caption``: its shape at a random place and scale."""
    background = BACKGROUNDS[caption.background]
    image = Image.new("RGB", (size, size), background)
    draw_object(ImageDraw.Draw(image), caption.shape, random_box(rng, size),
                COLORS[caption.color], background)
    return image


def _random_color(rng: random.Random) -> RGB:
    if rng.random() < 0.5:
        return rng.choice(list(COLORS.values()) + list(BACKGROUNDS.values()))
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def draw_scene(size: int, rng: random.Random) -> Image.Image:
    """One to three circles, ellipses, rectangles and triangles of random
    colours, sizes and places on a random background.

    Objects may overlap and may take the background's colour, so holes and
    nested shapes occur without any shape being a ring.
    """
    background = _random_color(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        width = rng.uniform(0.15, 0.8) * size
        height = width if rng.random() < 0.6 else rng.uniform(0.15, 0.8) * size
        x0 = rng.uniform(-0.1 * width, size - 0.9 * width)
        y0 = rng.uniform(-0.1 * height, size - 0.9 * height)
        color = background if rng.random() < 0.1 else _random_color(rng)
        draw_object(draw, rng.choice(SHAPES), (x0, y0, x0 + width, y0 + height),
                    color, background)
    return image


def concept_captions() -> list[Caption]:
    """The concept in every colour on every background."""
    return [Caption(color, CONCEPT_WORD, background) for color in COLORS
            for background in BACKGROUNDS]


def make_concept_dataset(path: str, num_images: int = 32, size: int = 64,
                         seed: int = 0) -> str:
    """Write an imagefolder of the held-out concept.

    ``NNNN.png`` beside ``metadata.jsonl`` (``file_name``, ``text``), e.g.
    "a red zorb on a white background", the captions cycling through
    :func:`concept_captions`.

    Returns:
        str: ``path``.
    """
    return write_imagefolder(path, concept_captions(), num_images, size, seed)


def write_imagefolder(path: str, captions: Sequence[Caption], num_images: int,
                      size: int, seed: int) -> str:
    """Draw ``num_images`` images cycling through ``captions`` into an
    imagefolder at ``path``; returns ``path``."""
    rng = random.Random(seed)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metadata.jsonl"), "w") as f:
        for i in range(num_images):
            caption = captions[i % len(captions)]
            file_name = f"{i:04d}.png"
            draw_captioned(caption, size, rng).save(os.path.join(path,
                                                                 file_name))
            f.write(json.dumps({"file_name": file_name,
                                "text": caption.text()}) + "\n")
    return path
