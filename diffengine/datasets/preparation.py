"""What a dataset gets to prepare itself before training.

A runner builds the training dataset before its data loader and calls
``dataset.prepare(context)`` on any dataset that has the method, without
knowing its class: the dataset does its own work (class images, the
pre-flight scan, the text-embedding and latent caches) with what the context
holds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PrepareContext:
    """What a dataset may use to prepare itself.

    Args:
        model: The model to train, unwrapped (its ``infer``,
            ``encode_images``, ``latent_encoder_id`` and
            ``prepare_text_embeddings``).
        work_dir (str): The run's folder, where caches and class images go
            so that later runs of it find them.
        batch_size (int): Samples per batch of the training data loader.
        logger (logging.Logger): The run's logger.
    """

    model: Any
    work_dir: str
    batch_size: int
    logger: logging.Logger
