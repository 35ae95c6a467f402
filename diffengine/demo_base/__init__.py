"""The demo's pretrained tiny base: its drawings, its training, the scorer
of its images and the shipped weights (``weights/``)."""
import os

from diffengine.demo_base.scenes import (
    CONCEPT_WORD,
    Caption,
    make_concept_dataset,
    parse_caption,
)
from diffengine.demo_base.scoring import ShapeScore, ShapeScorer

# The shipped base: a diffusers folder with pretraining.json.
WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")

__all__ = ["CONCEPT_WORD", "WEIGHTS", "Caption", "ShapeScore", "ShapeScorer",
           "make_concept_dataset", "parse_caption"]
