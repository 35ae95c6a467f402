"""A validation split held out of a dataset by a seeded draw of its rows."""
from __future__ import annotations

import numpy as np

from diffengine.errors import ConfigError

SUBSETS = ("train", "validation")


def split_rows(num_rows: int, validation_fraction: float, subset: str,
               seed: int = 0) -> list[int]:
    """The rows of ``subset`` when ``validation_fraction`` of ``num_rows``
    is held out for validation.

    The held-out rows are a seeded random draw, the same for the training
    and the validation dataset of one config, so the two never share a row.

    Args:
        num_rows (int): Rows (images) of the whole dataset.
        validation_fraction (float): Share held out, in [0, 1); at least
            one row when above 0.
        subset (str): ``"train"`` (the rows not held out) or
            ``"validation"`` (the held-out rows).
        seed (int): Seeds the draw. Defaults to 0.

    Returns:
        list[int]: Row indices, in increasing order.
    """
    if subset not in SUBSETS:
        raise ConfigError(f"subset={subset!r}; use one of {SUBSETS}.")
    if not 0 <= validation_fraction < 1:
        raise ConfigError(
            f"validation_fraction={validation_fraction}: give a share in "
            "[0, 1), e.g. 0.1.")
    if validation_fraction == 0:
        if subset == "validation":
            raise ConfigError(
                "subset='validation' with validation_fraction=0 holds no "
                "row; set validation_fraction, e.g. 0.1.")
        return list(range(num_rows))
    held_out = max(1, round(validation_fraction * num_rows))
    if held_out >= num_rows:
        raise ConfigError(
            f"validation_fraction={validation_fraction} of {num_rows} rows "
            "leaves none to train on; lower it.")
    order = np.random.default_rng(seed).permutation(num_rows)
    rows = order[:held_out] if subset == "validation" else order[held_out:]
    return sorted(int(r) for r in rows)
