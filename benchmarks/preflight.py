"""How long the pre-flight scan takes, serial and in worker processes.

    python benchmarks/preflight.py --images 1000

Writes ``--images`` JPEGs (four in five 512×512, one in five 1024×768
tagged EXIF orientation 6, as phones store portraits) in a temporary
folder, then times the scan that ``CaptionedImageDataset.preflight`` runs
(:func:`~diffengine.datasets.preflight.scan_images`: a decode of every
image) with one process and with ``--workers``, best of ``--repeats``, in
seconds per 1,000 images. The header-only read (``image_size``) is the
floor: what a scan that does not decode would cost.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from diffengine.datasets.image import image_size
from diffengine.datasets.preflight import scan_images


def write_photos(folder: str, count: int) -> list[str]:
    """``count`` JPEGs of noise over a gradient (so that they compress as
    photos do, not as flat colour)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        width, height = (1024, 768) if i % 5 == 4 else (512, 512)
        gradient = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
        noise = rng.integers(0, 56, (height, width, 3)).astype(np.float32)
        array = (gradient + noise).astype(np.uint8)
        exif = Image.Exif()
        if i % 5 == 4:
            exif[0x0112] = 6
        path = os.path.join(folder, f"photo {i:05d}.jpg")
        Image.fromarray(array).save(path, quality=90, exif=exif.tobytes())
        paths.append(path)
    return paths


def best_time(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000,
                        help="JPEGs to write and scan (default: 1000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes of the parallel scan "
                        "(default: the CPU count)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each way; the fastest counts "
                        "(default: 3)")
    parser.add_argument("--folder", help="where to write the images "
                        "(default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        paths = write_photos(folder, args.images)
        per_thousand = 1000 / len(paths)
        rows = {
            "header only": best_time(
                lambda: [image_size(p) for p in paths], args.repeats),
            "decode, 1 process": best_time(
                lambda: scan_images(paths), args.repeats),
            f"decode, {args.workers} workers": best_time(
                lambda: scan_images(paths, args.workers), args.repeats),
        }
    print(f"pre-flight scan of {len(paths)} JPEGs (4/5 512×512, 1/5 "
          f"1024×768), {os.cpu_count()} CPUs, best of {args.repeats}:")
    print(f"  {'way':<24}{'s / 1,000 images':>18}")
    for way, seconds in rows.items():
        print(f"  {way:<24}{seconds * per_thousand:>18.2f}")
    return {way: seconds * per_thousand for way, seconds in rows.items()}


if __name__ == "__main__":
    main()
