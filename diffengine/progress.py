"""The progress bars of sampling, merges and exports."""
from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str) -> tqdm:
    """A bar on stderr that shows only on a terminal: logs and pipes stay
    free of carriage-return noise, which is what ``disable=None`` does.

    Args:
        total (int): How many units the work has.
        desc (str): What is done, e.g. ``"SDXL single file"``.
        unit (str): What one unit is, e.g. ``"tensor"``.
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False,
                dynamic_ncols=True)
