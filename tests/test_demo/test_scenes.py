import json
import os
import random

import numpy as np

from diffengine.datasets import HFDataset
from diffengine.demo import CONCEPT_WORD, make_concept_dataset
from diffengine.demo.scenes import (
    concept_captions,
    draw_scene,
    pretraining_captions,
)


def test_the_concept_is_held_out_of_the_pretraining_captions():
    texts = [c.text() for c in pretraining_captions()]
    assert len(texts) == 36 and len(set(texts)) == 36
    assert not any(CONCEPT_WORD in t for t in texts)
    # not even its first letter: the text encoder never trained on it
    assert not any(CONCEPT_WORD[0] in t for t in texts)
    assert {c.shape for c in pretraining_captions()} == {
        "circle", "square", "triangle"}
    assert {c.shape for c in concept_captions()} == {"ring"}


def test_concept_dataset_is_an_imagefolder_of_its_captions(tmp_path):
    path = make_concept_dataset(str(tmp_path / "zorbs"), num_images=12)
    with open(os.path.join(path, "metadata.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["text"] for r in rows] == [c.text() for c in concept_captions()]
    dataset = HFDataset(path)
    assert len(dataset) == 12
    assert dataset.caption_at(0) == "a red zorb on a white background"


def test_scenes_are_reproducible_and_varied():
    first = [np.asarray(draw_scene(64, random.Random(5))) for _ in range(2)]
    assert np.array_equal(*first)
    rng = random.Random(0)
    colours = {tuple(np.asarray(draw_scene(64, rng))[0, 0]) for _ in range(20)}
    assert len(colours) > 10
