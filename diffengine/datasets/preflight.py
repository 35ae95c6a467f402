"""The pre-flight scan: every image of a dataset decoded once, before the
first training step, so that all the bad files are named in one report.

Decoding is the expensive part (a 512² JPEG takes milliseconds); it runs in
worker processes once there are enough images to repay their start
(``benchmarks/preflight.py`` measures both ways).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from diffengine.datasets.image import check_image
from diffengine.errors import ConfigError, DataError
from diffengine.stop import raise_if_stop_requested

# Below this many images per worker, starting the workers costs more than
# they save.
MIN_IMAGES_PER_WORKER = 64
# Most worker processes one scan starts.
MAX_WORKERS = 16
# Report lines that one message holds; the rest are logged one a line.
REPORT_LIMIT = 50


def scan_worker_count(num_images: int, world_size: int = 1) -> int:
    """Worker processes for scanning ``num_images`` images on each of
    ``world_size`` processes: the machine's cores shared among them, none
    (a serial scan) for few images."""
    # The cores this process may run on (a container's or a job's share),
    # not the machine's.
    usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)
    cores = max(1, usable // world_size)
    return max(1, min(cores, MAX_WORKERS,
                      num_images // MIN_IMAGES_PER_WORKER))


def _check(source: dict | str | bytes) -> tuple[int, int] | str:
    """The displayed size of an image, or why it cannot be read."""
    try:
        return check_image(source)
    except OSError as err:
        return str(err.__cause__ or err)


def scan_images(sources: Sequence[dict | str | bytes],
                workers: int = 1) -> list[tuple[int, int] | str]:
    """Decode each image; its displayed (width, height), or why it cannot
    be read.

    Args:
        sources: Images as :func:`~diffengine.datasets.image.open_image`
            takes them.
        workers (int): Processes that decode in parallel; 1 decodes here.
            Defaults to 1.

    Returns:
        list: One (width, height) or message per source, in order.
    """
    if workers <= 1:
        results = map(_check, sources)
        return [_unless_stopped(result) for result in results]
    # fork where there is one: a spawned worker would import torch again
    # before its first image.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context(
        "fork" if "fork" in methods else None)
    chunksize = max(1, len(sources) // (workers * 4))
    pool = ProcessPoolExecutor(workers, mp_context=context,
                               initializer=_leave_interrupts_to_main)
    try:
        results = pool.map(_check, sources, chunksize=chunksize)
        return [_unless_stopped(result) for result in results]
    finally:
        # after a stop signal, the chunks not started yet are dropped
        pool.shutdown(wait=False, cancel_futures=True)


def _unless_stopped(result: tuple[int, int] | str) -> tuple[int, int] | str:
    """``result``, unless a stop signal came: a scan of many images ends
    within an image's time of it."""
    raise_if_stop_requested()
    return result


def _leave_interrupts_to_main() -> None:
    """A scan worker ignores Ctrl-C: the training process decides how to
    stop, and the worker is ended with the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pipeline_size_problem(transforms: Sequence, width: int,
                          height: int) -> str | None:
    """Why an image of ``width`` × ``height`` cannot go through the
    pipeline's resizes, crops and buckets, or None when it can.

    Each geometric transform says what size it makes of an image
    (``output_size``), or refuses it with a ``DataError``: a crop larger
    than the image, an image too thin for any bucket, an aspect ratio
    beyond ``MAX_ASPECT_RATIO``.
    """
    for transform in transforms:
        output_size = getattr(transform, "output_size", None)
        if output_size is None:
            continue
        try:
            width, height = output_size(width, height)
        except DataError as err:
            return str(err)
    return None


def format_report(lines: Sequence[str]) -> str:
    """The report's lines joined into one, up to ``REPORT_LIMIT`` of them
    (without their full stops, which would stand before the semicolons)."""
    shown = "; ".join(line.rstrip(".") for line in lines[:REPORT_LIMIT])
    if len(lines) > REPORT_LIMIT:
        shown += (f"; and {len(lines) - REPORT_LIMIT} more, each logged "
                  "above")
    return shown


@dataclass(frozen=True)
class BadImageLimits:
    """How many bad images a dataset skips before it refuses them.

    Up to ``max(max_bad_images, max_bad_fraction × images)``, never all:
    the count lets a folder of ten photos lose an odd file or two, the
    share lets a hundred thousand lose a few thousand.

    Raises:
        ConfigError: If either is out of range.
    """

    max_bad_images: int
    max_bad_fraction: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(
                f"max_bad_fraction={self.max_bad_fraction} is not a share in "
                "[0, 1].")
        if not isinstance(self.max_bad_images, int) or (
                self.max_bad_images < 0):
            raise ConfigError(f"max_bad_images={self.max_bad_images!r} must "
                              "be an integer >= 0.")

    def limit(self, total: int) -> int:
        """How many of ``total`` images may be bad and skipped."""
        return max(self.max_bad_images, int(self.max_bad_fraction * total))

    def allow(self, num_bad: int, total: int) -> bool:
        """Whether ``num_bad`` of ``total`` images may be skipped."""
        return num_bad <= self.limit(total) and num_bad < total

    def excess(self, num_bad: int, total: int) -> str:
        """Why ``num_bad`` of ``total`` bad images are too many."""
        if num_bad >= total:
            return "every one"
        return (f"more than the {self.limit(total)} that max_bad_images="
                f"{self.max_bad_images} and max_bad_fraction="
                f"{self.max_bad_fraction} allow")


@dataclass
class ScanFindings:
    """What a scan found wrong.

    Attributes:
        lines (list[str]): One line per problem, naming the file, in row
            order (a repeated image's once).
        bad_rows (set[int]): The rows to skip.
        bad_images (set[str]): The images (by key) with a problem.
    """

    lines: list[str] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)
    bad_images: set[str] = field(default_factory=set)


def find_problems(keys: Sequence[str],
                  results: dict[str, tuple[int, int] | str],
                  caption_problems: dict[int, str],
                  transforms: Sequence) -> ScanFindings:
    """The problems of a scan's results.

    Args:
        keys: The image (its key) of each row.
        results: Each image's displayed size, or why it cannot be read.
        caption_problems: Each row with an unusable caption, and why.
        transforms: The pipeline, which may refuse an image's size.
    """
    image_problems = {}
    for key, result in results.items():
        if isinstance(result, str):
            image_problems[key] = f"{key}: unreadable ({result})"
        elif problem := pipeline_size_problem(transforms, *result):
            image_problems[key] = f"{key}: {problem}"
    bad_rows = {idx for idx, key in enumerate(keys)
                if key in image_problems or idx in caption_problems}
    lines = list(dict.fromkeys(
        image_problems.get(keys[idx]) or caption_problems[idx]
        for idx in sorted(bad_rows)))
    return ScanFindings(lines, bad_rows, set(image_problems) | {
        keys[idx] for idx in caption_problems})
