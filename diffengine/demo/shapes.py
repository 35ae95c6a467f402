"""The demo's captioned shapes: a filled circle, square or triangle of one
of six colours on a white or black background."""
from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, color: str, background: str, size: int,
               rng: random.Random) -> Image.Image:
    """One RGB image of a filled shape at a random place and scale."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(0.45, 0.7) * size
    x0 = rng.uniform(0, size - extent)
    y0 = rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0 + extent, y0 + extent),
                      (x0, y0 + extent)], fill=COLORS[color])
    return image


def make_shapes_dataset(path: str,
                        num_images: int = 24,
                        size: int = 64,
                        seed: int = 0) -> str:
    """Write an imagefolder dataset of captioned shapes.

    Files are ``NNNN.png`` beside ``metadata.jsonl`` with ``file_name`` and
    ``text`` (e.g. "a red circle on a white background").

    Returns:
        str: ``path``.
    """
    rng = random.Random(seed)
    os.makedirs(path, exist_ok=True)
    rows = []
    for i in range(num_images):
        shape = SHAPES[i % len(SHAPES)]
        color = list(COLORS)[(i // len(SHAPES)) % len(COLORS)]
        background = list(BACKGROUNDS)[i % len(BACKGROUNDS)]
        file_name = f"{i:04d}.png"
        draw_shape(shape, color, background, size, rng).save(
            os.path.join(path, file_name))
        rows.append({
            "file_name": file_name,
            "text": f"a {color} {shape} on a {background} background",
        })
    with open(os.path.join(path, "metadata.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
