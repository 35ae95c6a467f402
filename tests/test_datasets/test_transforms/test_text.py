"""Caption transforms: dropout rate and tag shuffling, per sample seed."""
import pytest

from diffengine.errors import ConfigError
from diffengine.randomness import Randomness
from diffengine.registry import TRANSFORMS

CAPTION = "sks dog, red collar, grass, sunny day, park"


def apply(transform, seed, text=CAPTION):
    return TRANSFORMS.build(transform)(
        {"text": text, "randomness": Randomness.from_seeds([seed], "data")}
    )["text"]


def test_text_drop_empties_p_of_the_captions():
    captions = [apply(dict(type="RandomTextDrop", p=0.1), s)
                for s in range(4000)]
    dropped = captions.count("")
    assert dropped / 4000 == pytest.approx(0.1, abs=0.015)
    assert set(captions) == {"", CAPTION}
    assert apply(dict(type="RandomTextDrop", p=1.0), 0) == ""
    assert apply(dict(type="RandomTextDrop", p=0.0), 0) == CAPTION
    with pytest.raises(ConfigError, match=r"p=1\.5"):
        TRANSFORMS.build(dict(type="RandomTextDrop", p=1.5))


def test_shuffle_keeps_the_first_tags_and_all_tags():
    tags = [t.strip() for t in CAPTION.split(",")]
    shuffled = {apply(dict(type="ShuffleCaptionTags", keep_tokens=2), s)
                for s in range(300)}
    assert len(shuffled) == 6  # every order of the three last tags
    for caption in shuffled:
        parts = caption.split(", ")
        assert parts[:2] == tags[:2]
        assert sorted(parts) == sorted(tags)
    # the sample's seed decides the order
    transform = dict(type="ShuffleCaptionTags", keep_tokens=0)
    assert apply(transform, 9) == apply(transform, 9)
    assert len({apply(transform, s) for s in range(500)}) > 100
    # other separators, short captions
    assert apply(dict(type="ShuffleCaptionTags", separator="|"), 1,
                 "a | b") == "a| b"
    assert apply(dict(type="ShuffleCaptionTags"), 1, "alone") == "alone"
    with pytest.raises(ConfigError, match="separator=' '"):
        TRANSFORMS.build(dict(type="ShuffleCaptionTags", separator=" "))
