import random

import numpy as np
import pytest
from PIL import Image

from diffengine.demo import ShapeScorer, parse_caption
from diffengine.demo.scenes import (
    Caption,
    concept_captions,
    draw_captioned,
    pretraining_captions,
)

SCORER = ShapeScorer()


@pytest.mark.parametrize("caption", pretraining_captions()[::5] +
                         concept_captions()[::3], ids=Caption.text)
def test_a_drawing_scores_high_on_its_own_caption(caption):
    image = draw_captioned(caption, 64, random.Random(3))
    parts = SCORER.score(image, caption.text())
    assert parts.color > 0.95 and parts.shape > 0.85 and parts.score > 0.85
    if caption.shape != "ring":
        assert parts.drawn_shape == caption.shape


def test_a_disc_is_no_ring_and_the_wrong_colour_scores_zero():
    disc = draw_captioned(Caption("red", "circle", "white"), 64,
                          random.Random(0))
    ring = draw_captioned(Caption("red", "zorb", "white"), 64,
                          random.Random(0))
    assert SCORER(ring, "a red zorb on a white background") > 0.85
    assert SCORER(disc, "a red zorb on a white background") < 0.05
    assert SCORER(disc, "a red circle on a white background") > 0.9
    # a blue circle: the shape is right, the colour is not
    parts = SCORER.score(disc, "a blue circle on a white background")
    assert parts.color == 0 and parts.score == 0 and parts.shape > 0.9
    # a square drawn for a triangle
    square = draw_captioned(Caption("red", "square", "white"), 64,
                            random.Random(0))
    assert SCORER(square, "a red triangle on a white background") < 0.1


def test_an_empty_or_noisy_image_scores_zero():
    blank = Image.new("RGB", (64, 64), (245, 245, 245))
    parts = SCORER.score(blank, "a red zorb on a white background")
    assert (parts.score, parts.shape, parts.drawn_shape) == (0, 0, None)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3),
                                              dtype=np.uint8)
    assert SCORER(noise, "a red zorb on a white background") < 0.05
    # float images in [0, 1] are read as such
    ring = draw_captioned(Caption("blue", "zorb", "black"), 64,
                          random.Random(1))
    as_float = np.asarray(ring, dtype=np.float32) / 255
    assert SCORER(as_float, "a blue zorb on a black background") == SCORER(
        ring, "a blue zorb on a black background")


def test_captions_outside_the_vocabulary_are_named():
    assert parse_caption("a red zorb on a black background") == Caption(
        "red", "zorb", "black")
    with pytest.raises(ValueError, match=r"'a pink circle' is not 'a COLOR "
                       r"SHAPE on a BACKGROUND background'"):
        parse_caption("a pink circle")
    with pytest.raises(ValueError, match="tolerance=0"):
        ShapeScorer(tolerance=0)
