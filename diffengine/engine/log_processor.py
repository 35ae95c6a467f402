"""Training log lines with throughput and peak memory."""
from __future__ import annotations

import re
import resource
import sys

import numpy as np
from mmengine.runner import IterBasedTrainLoop, LogProcessor

from diffengine.registry import LOG_PROCESSORS

# Seconds spent on samples and validation between iterations so far, kept in
# the message hub's runtime info (and so in checkpoints).
TIME_BETWEEN_ITERATIONS = "time_between_iterations"
# Iteration times the ETA's median is taken over: recent enough to follow a
# change of speed, many enough to ignore an iteration that waited on others.
ETA_WINDOW = 200
VAL_HEADER = re.compile(r"^Epoch\(val\)\s*\[\d+\]")


def add_time_between_iterations(runner, seconds: float) -> None:
    """Count ``seconds`` of work between iterations (samples, validation)
    into the ETA's share of such work per iteration."""
    hub = runner.message_hub
    hub.update_info(TIME_BETWEEN_ITERATIONS,
                    hub.get_info(TIME_BETWEEN_ITERATIONS, 0.0) + seconds)


def peak_ram_mb() -> int:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KB on Linux, in bytes on macOS.
    return peak // (1024 * 1024) if sys.platform == "darwin" else peak // 1024


@LOG_PROCESSORS.register_module()
class SpeedLogProcessor(LogProcessor):
    """mmengine's ``LogProcessor`` plus ``it/s`` and ``peak_ram`` (MB).

    mmengine's line already has ``eta``, ``time`` (seconds per iteration)
    and, on CUDA, ``memory`` (peak GPU MB since the last line). This adds
    iterations per second, the inverse of the smoothed ``time``, and the
    peak host memory of the process, which shows CPU-only runs too. Both
    also go to the scalar log (``vis_data/scalars.json``) and TensorBoard.

    The ETA is the median iteration time of the last ``ETA_WINDOW``
    iterations plus the share per iteration of the time samples and
    validation took so far, times the iterations left: mmengine's mean
    counts a sampling pause into the next iteration's time, which swung the
    ETA by minutes after every sample grid.

    Validation results are logged as evaluated: mmengine averages every
    value whose name holds "loss" over the log window, which would mix a
    ``val/loss`` with those of earlier checkpoints. A validation that runs
    every few iterations (``val_by_epoch=False``, iteration-based loops) is
    labelled by its iteration, ``Iter(val) [30/300]``, not by an epoch.

    Args:
        **kwargs: Arguments of mmengine's ``LogProcessor``.
    """

    def get_log_after_iter(self, runner, batch_idx: int,
                           mode: str) -> tuple[dict, str]:
        if mode == "train":
            self._update_eta(runner)
        tag, log_str = super().get_log_after_iter(runner, batch_idx, mode)
        if mode != "train":
            return tag, self._label_validation(runner, log_str)
        # ``time``: seconds per iteration, smoothed over the log window.
        seconds = tag.get("time", tag.get("train/time"))
        extra: dict[str, float] = {}
        if seconds:
            # significant digits: slow runs log 0.01234 it/s, not 0.0123
            extra["it/s"] = float(f"{1.0 / seconds:.{self.num_digits}g}")
        extra["peak_ram"] = peak_ram_mb()
        tag.update(extra)
        log_str = log_str.rstrip() + "  " + "  ".join(
            f"{k}: {v}" for k, v in extra.items())
        return tag, log_str

    def get_log_after_epoch(self, runner, batch_idx: int, mode: str,
                            with_non_scalar: bool = False) -> tuple[dict, str]:
        tag, log_str = super().get_log_after_epoch(runner, batch_idx, mode,
                                                   with_non_scalar)
        return tag, self._label_validation(runner, log_str)

    def _update_eta(self, runner) -> None:
        """Replace mmengine's ETA (see the class docstring)."""
        hub = runner.message_hub
        if "train/time" not in hub.log_scalars:
            return
        times = hub.get_scalar("train/time").data[0][-ETA_WINDOW:]
        done = runner.iter + 1
        between = hub.get_info(TIME_BETWEEN_ITERATIONS, 0.0) / done
        hub.update_info("eta", (float(np.median(times)) + between)
                        * max(runner.max_iters - done, 0))

    @staticmethod
    def _label_validation(runner, log_str: str) -> str:
        """``Iter(val) [N/max]`` for a validation after iteration N."""
        # DiffEngineRunner's; with another runner the label stays mmengine's
        loop = getattr(runner, "built_train_loop", None)
        if loop is None or not (
                isinstance(loop, IterBasedTrainLoop)
                or getattr(loop, "val_by_epoch", True) is False):
            return log_str
        return VAL_HEADER.sub(
            f"Iter(val) [{runner.iter}/{runner.max_iters}]", log_str)

    def _collect_scalars(self, custom_cfg: list, runner, mode: str,
                         reserve_prefix: bool = False) -> dict:
        tag = super()._collect_scalars(custom_cfg, runner, mode,
                                       reserve_prefix)
        if mode not in ("val", "test"):
            return tag
        for key in tag:
            hub_key = key if reserve_prefix else f"{mode}/{key}"
            if hub_key in (f"{mode}/time", f"{mode}/data_time"):
                continue
            buffer = runner.message_hub.log_scalars.get(hub_key)
            if buffer is not None:
                tag[key] = buffer.current()
        return tag
