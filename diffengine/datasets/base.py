"""What every captioned-image dataset of diffengine shares."""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from diffengine.errors import DataError
from diffengine.registry import TRANSFORMS


class CaptionedImageDataset(BaseDataset):
    """Base of datasets yielding ``{"img", "text"}`` samples.

    Subclasses give ``__len__`` and ``get_data_info(index)``, which raises
    ``OSError`` for an unreadable image and ``DataError`` for an unusable
    caption. Such a row is skipped with a warning naming it (the next row
    takes its place) and counted; more than ``max_bad_fraction`` of the rows
    bad is an error.

    Indexed with ``(index, seed)`` (as ``DeterministicSampler`` yields), the
    random transforms of the sample are seeded with ``seed`` and the seed is
    passed on to the model for its noise.

    Args:
        name (str): Names the dataset in messages.
        pipeline (Sequence[dict]): Transforms applied to each sample.
        max_bad_fraction (float): Largest share of bad rows that is skipped
            rather than an error. Defaults to 0.05.
    """

    def __init__(self, name: str, pipeline: Sequence[dict] = (),
                 max_bad_fraction: float = 0.05) -> None:
        self.dataset_name = name
        self.max_bad_fraction = max_bad_fraction
        self.bad_rows: set[int] = set()
        # Built from diffengine's registry, so that a dataset made outside a
        # runner (no default scope) finds diffengine's transforms too.
        transforms = [
            TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline
        ]
        super().__init__(pipeline=transforms, serialize_data=False)

    def full_init(self) -> None:
        """Rows are read on demand; nothing to load up front."""
        self._fully_initialized = True

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample ``key`` (an index, or ``(index, seed)``) after transforms."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed % 2**32)
        for _ in range(len(self)):
            try:
                info = self.get_data_info(index)
                break
            except (OSError, DataError) as err:
                self._skip_bad_row(index, err)
                index = (index + 1) % len(self)
        else:
            raise DataError(f"no readable row in {self.dataset_name!r}.")
        if seed is not None:
            info["seed"] = seed
        return self.pipeline(info)

    def prepare_data(self, idx: int) -> dict:
        return self[idx]

    def _skip_bad_row(self, index: int, err: Exception) -> None:
        self.bad_rows.add(index)
        limit = self.max_bad_fraction * len(self)
        if len(self.bad_rows) > limit:
            raise DataError(
                f"{len(self.bad_rows)} bad rows in {self.dataset_name!r}, "
                f"more than max_bad_fraction={self.max_bad_fraction} of "
                f"{len(self)}; the latest: {err}. Fix or remove them, or "
                "raise max_bad_fraction.") from err
        print_log(
            f"skipped row {index}: {err} ({len(self.bad_rows)} of "
            f"{len(self)} rows skipped so far)",
            logger="current",
            level=logging.WARNING)
