"""Plot the training loss of a work dir from mmengine's JSON scalar log.

    mim run diffengine plot_loss work_dirs/CONFIG --out loss.png

Reads every ``<work_dir>/<timestamp>/vis_data/scalars.json`` (one per run;
a resumed run continues the curve) and draws each logged value against the
global step, with a moving average.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def read_scalar_log(work_dir: str) -> list[dict]:
    """The training rows (those with a ``step``) of all runs, by step.

    Where a later run (a resumed one) logs a step again, its row wins.
    """
    logs = sorted(glob.glob(
        os.path.join(work_dir, "*", "vis_data", "scalars.json")))
    if not logs:
        raise FileNotFoundError(
            f"no <timestamp>/vis_data/scalars.json under {work_dir!r}; point "
            "at the work dir of a run (work_dirs/<config>).")
    rows: dict[int, dict] = {}
    for log in logs:
        with open(log) as f:
            for line in f:
                row = json.loads(line)
                if "step" in row and "loss" in row:
                    rows[int(row["step"])] = row
    return [rows[step] for step in sorted(rows)]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (sums[ends] - sums[ends - counts]) / counts


def plot_loss(work_dir: str, out: str, keys: tuple[str, ...] = ("loss", ),
              window: int = 10) -> dict[str, np.ndarray]:
    """Draw ``keys`` against the step into the PNG ``out``.

    Returns:
        dict[str, np.ndarray]: ``"step"`` and each key's values, as drawn.
    """
    rows = read_scalar_log(work_dir)
    missing = [k for k in keys if not any(k in r for r in rows)]
    if missing:
        raise KeyError(f"{missing} not logged in {work_dir!r}; the log has "
                       f"{sorted({k for r in rows for k in r})}.")
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series = {}
    for key in keys:
        steps = np.array([r["step"] for r in rows if key in r], dtype=float)
        values = np.array([r[key] for r in rows if key in r], dtype=float)
        series["step"], series[key] = steps, values
        line, = axes.plot(steps, values, alpha=0.35, linewidth=1)
        axes.plot(steps, moving_average(values, window), color=line.get_color(),
                  linewidth=2, label=f"{key} (mean of {window})")
    axes.set_xlabel("step")
    axes.set_ylabel(", ".join(keys))
    axes.set_title(os.path.basename(os.path.normpath(work_dir)))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figure.savefig(out)
    return series


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="plot_loss", description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", help="work_dirs/<config>")
    parser.add_argument("--out", default="loss.png",
                        help="PNG to write (default: loss.png)")
    parser.add_argument("--keys", nargs="+", default=["loss"],
                        help="logged values to draw (default: loss)")
    parser.add_argument("--window", type=int, default=10,
                        help="moving-average window in log lines (default: 10)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    series = plot_loss(args.work_dir, args.out, tuple(args.keys), args.window)
    key = args.keys[0]
    print(f"wrote {args.out}: {key} over {len(series['step'])} log lines, "
          f"steps {int(series['step'][0])}-{int(series['step'][-1])}, "
          f"{series[key][0]:.4f} -> {series[key][-1]:.4f}")


if __name__ == "__main__":
    main()
