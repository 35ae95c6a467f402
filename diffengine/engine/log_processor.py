"""Training log lines with throughput and peak memory."""
from __future__ import annotations

import resource
import sys

from mmengine.runner import LogProcessor

from diffengine.registry import LOG_PROCESSORS


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

    Validation results are logged as evaluated: mmengine averages every
    value whose name holds "loss" over the log window, which would mix a
    ``val/loss`` with those of earlier checkpoints.

    Args:
        **kwargs: Arguments of mmengine's ``LogProcessor``.
    """

    def get_log_after_iter(self, runner, batch_idx: int,
                           mode: str) -> tuple[dict, str]:
        tag, log_str = super().get_log_after_iter(runner, batch_idx, mode)
        if mode != "train":
            return tag, log_str
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
