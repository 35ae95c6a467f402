"""Plot the training loss of a work dir from mmengine's JSON scalar log.

    mim run diffengine plot_loss work_dirs/CONFIG --out loss.png

Reads every ``<work_dir>/<timestamp>/vis_data/scalars.json`` (one per run;
a resumed run continues the curve) and draws each logged value against the
global step, with a moving average; the validation loss (``val/loss``),
when the run logged it, is drawn beside the training loss, point by point.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

from diffengine.errors import ConfigError, MissingFileError


def read_scalar_log(work_dir: str) -> list[dict]:
    """The logged values of all runs, one row per step, by step.

    Rows of one step (training, validation, sample scores) are merged;
    where a later run (a resumed one) logs a value of a step again, its
    value wins.
    """
    logs = sorted(glob.glob(
        os.path.join(work_dir, "*", "vis_data", "scalars.json")))
    if not logs:
        raise MissingFileError(
            f"no <timestamp>/vis_data/scalars.json under {work_dir!r}; point "
            "at the work dir of a run (work_dirs/<config>).")
    rows: dict[int, dict] = {}
    for log in logs:
        with open(log) as f:
            for line in f:
                row = json.loads(line)
                if "step" in row:
                    rows.setdefault(int(row["step"]), {}).update(row)
    return [rows[step] for step in sorted(rows)]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (sums[ends] - sums[ends - counts]) / counts


VALIDATION_KEY = "val/loss"


def plot_loss(work_dir: str, out: str, keys: tuple[str, ...] | None = None,
              window: int = 10) -> dict[str, np.ndarray]:
    """Draw ``keys`` against the step into the PNG ``out``.

    Args:
        work_dir (str): The work dir of a run.
        out (str): The PNG.
        keys (tuple[str, ...], optional): Logged values. Defaults to
            ``loss``, and ``val/loss`` when it was logged.
        window (int): Moving-average window in log lines; the validation
            loss is drawn without one. Defaults to 10.

    Returns:
        dict[str, np.ndarray]: ``"step"`` (the first key's steps), and for
        each key its values and ``"<key>/step"``, as drawn.
    """
    # here, not at the top: --help need not wait for matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_scalar_log(work_dir)
    if keys is None:
        keys = ("loss", ) + ((VALIDATION_KEY, ) if any(
            VALIDATION_KEY in r for r in rows) else ())
    missing = [k for k in keys if not any(k in r for r in rows)]
    if missing:
        raise ConfigError(f"--keys {missing} not logged in {work_dir!r}; the "
                          f"log has {sorted({k for r in rows for k in r})}.")
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series = {}
    for key in keys:
        steps = np.array([r["step"] for r in rows if key in r], dtype=float)
        values = np.array([r[key] for r in rows if key in r], dtype=float)
        series.setdefault("step", steps)
        series[key], series[f"{key}/step"] = values, steps
        if key == VALIDATION_KEY:
            axes.plot(steps, values, marker="o", linewidth=2,
                      label=f"{key} (fixed noise and timesteps)")
            continue
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
    parser.add_argument(
        "--keys", nargs="+",
        help=f"logged values to draw (default: loss, and {VALIDATION_KEY} "
        "when logged)")
    parser.add_argument("--window", type=int, default=10,
                        help="moving-average window in log lines (default: 10)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    series = plot_loss(args.work_dir, args.out,
                       tuple(args.keys) if args.keys else None, args.window)
    drawn = [k for k in series if k != "step" and not k.endswith("/step")]
    print(f"wrote {args.out}: " + "; ".join(
        f"{key} over {len(series[key])} log lines, steps "
        f"{int(series[key + '/step'][0])}-{int(series[key + '/step'][-1])}, "
        f"{series[key][0]:.4f} -> {series[key][-1]:.4f}" for key in drawn))


if __name__ == "__main__":
    main()
