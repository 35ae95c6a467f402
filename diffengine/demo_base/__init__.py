"""The earlier name of :mod:`diffengine.demo`'s base: its names import from
here as before (``from diffengine.demo_base import WEIGHTS``)."""
from diffengine.demo import (
    CONCEPT_WORD,
    WEIGHTS,
    Caption,
    ShapeScore,
    ShapeScorer,
    make_concept_dataset,
    parse_caption,
)

__all__ = ["CONCEPT_WORD", "WEIGHTS", "Caption", "ShapeScore", "ShapeScorer",
           "make_concept_dataset", "parse_caption"]
