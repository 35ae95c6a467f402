"""Write the offline demo: a copy of the shipped base and the held-out
concept it learns."""
from __future__ import annotations

import os.path as osp
import shutil

from diffengine.demo.scenes import make_concept_dataset

# The shipped base: a diffusers folder with pretraining.json, written by
# ``tools/pretrain_demo_base.py``.
WEIGHTS = osp.join(osp.dirname(osp.abspath(__file__)), "weights")


def make_demo(out: str, num_images: int = 32,
              size: int = 64) -> tuple[str, str]:
    """Write ``out/tiny-sd`` (a fresh copy of :data:`WEIGHTS`) and
    ``out/zorbs`` (the concept dataset of
    :func:`~diffengine.demo.scenes.make_concept_dataset`).

    Args:
        out (str): The demo folder, e.g. ``data/demo``.
        num_images (int): Images of the concept. Defaults to 32.
        size (int): Their side in pixels (the base draws 64). Defaults
            to 64.

    Returns:
        tuple[str, str]: The model folder and the dataset folder.
    """
    model = osp.join(out, "tiny-sd")
    if osp.isdir(model):
        shutil.rmtree(model)
    shutil.copytree(WEIGHTS, model)
    data = make_concept_dataset(osp.join(out, "zorbs"),
                                num_images=num_images, size=size)
    return model, data
