"""The built-in offline demo: its drawn shapes and scenes, the pretraining
of its tiny base, the shipped base (``weights/``), the scorer of its images
and the writing of ``data/demo`` (``tools/make_demo.py``).

The tiny-model makers that lived here are in :mod:`diffengine.testing`;
their old names (``from diffengine.demo import make_tiny_sd``) still
import, from there.
"""
from diffengine.demo.make import WEIGHTS, make_demo
from diffengine.demo.scenes import (
    CONCEPT_WORD,
    Caption,
    make_concept_dataset,
    parse_caption,
)
from diffengine.demo.scoring import ShapeScore, ShapeScorer
from diffengine.demo.shapes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    draw_shape,
    make_shapes_dataset,
)

__all__ = ["BACKGROUNDS", "COLORS", "CONCEPT_WORD", "SHAPES", "WEIGHTS",
           "Caption", "ShapeScore", "ShapeScorer", "draw_shape",
           "make_concept_dataset", "make_demo", "make_shapes_dataset",
           "parse_caption"]


def __getattr__(name: str):
    """The makers' old names (``diffengine.demo.make_tiny_sd``, ...), from
    :mod:`diffengine.testing`; imported on first use, so that the demo
    itself needs neither diffusers nor transformers."""
    import diffengine.testing

    if name in diffengine.testing.__all__:
        return getattr(diffengine.testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
