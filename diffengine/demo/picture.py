"""The demo's before/after picture, put together from its sample grids."""
from __future__ import annotations

import glob
import os
import re

import numpy as np
from PIL import Image, ImageDraw

from diffengine.errors import MissingFileError

GRID_NAME = re.compile(r"^(?P<name>.+)_(?P<step>\d+)\.png$")


def sample_grids(work_dir: str) -> dict[int, str]:
    """The sample grids of the newest run in ``work_dir``, by step."""
    runs = sorted(glob.glob(os.path.join(work_dir, "*", "vis_data",
                                         "vis_image")))
    if not runs:
        raise MissingFileError(
            f"no <timestamp>/vis_data/vis_image under {work_dir!r}; train "
            "with a VisualizationHook first.")
    grids = {}
    for path in sorted(glob.glob(os.path.join(runs[-1], "*.png"))):
        match = GRID_NAME.match(os.path.basename(path))
        if match:
            grids[int(match["step"])] = path
    return grids


def before_after_picture(work_dir: str, out: str, zoom: int = 2) -> str:
    """Write the first and the last sample grid of the newest run side by
    side, each headed by its step, enlarged ``zoom`` times; returns ``out``.
    """
    grids = sample_grids(work_dir)
    if len(grids) < 2:
        raise MissingFileError(
            f"{work_dir!r} holds {len(grids)} sample grid(s); the picture "
            "needs the first (step 0, VisualizationHook at_start=True) and "
            "a later one.")
    first, last = min(grids), max(grids)
    panels = []
    for step in (first, last):
        grid = Image.open(grids[step]).convert("RGB")
        grid = grid.resize((grid.width * zoom, grid.height * zoom),
                           Image.NEAREST)
        panel = Image.new("RGB", (grid.width, grid.height + 16), "white")
        panel.paste(grid, (0, 16))
        ImageDraw.Draw(panel).text((2, 2), f"step {step}", fill="black")
        panels.append(np.asarray(panel))
    gap = np.full((panels[0].shape[0], 8, 3), 255, dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(np.concatenate([panels[0], gap, panels[1]], 1)).save(
        out, optimize=True)
    return out
