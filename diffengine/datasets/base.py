"""What every captioned-image dataset of diffengine shares."""
from __future__ import annotations

import logging
import os
import os.path as osp
import random
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from mmengine.dataset import BaseDataset
from mmengine.dist import all_gather_object, barrier, get_dist_info
from mmengine.logging import print_log

from diffengine.datasets.image import (
    image_digest,
    open_image,
    path_and_bytes,
)
from diffengine.datasets.latent_cache import LatentCache, LatentCachePlan
from diffengine.datasets.preflight import (
    REPORT_LIMIT,
    BadImageLimits,
    find_problems,
    format_report,
    scan_images,
    scan_worker_count,
)
from diffengine.datasets.preparation import PrepareContext
from diffengine.datasets.samplers import sample_seed
from diffengine.datasets.transforms.processing import CenterCrop, RandomCrop
from diffengine.errors import ConfigError, DataError
from diffengine.randomness import Randomness
from diffengine.registry import TRANSFORMS
from diffengine.stop import raise_if_stop_requested


def pipeline_resolution(transforms: Sequence) -> str | None:
    """``WxH`` that ``transforms`` bring every image to: a bucketing
    transform's resolution (the area its buckets keep), or the last crop's
    size; None when neither is there."""
    resolution = None
    for transform in transforms:
        if hasattr(transform, "bucket_of"):
            size = transform.resolution
        elif isinstance(transform, (CenterCrop, RandomCrop)):
            size = transform.size
        else:
            continue
        height, width = (size, size) if isinstance(size, int) else size
        resolution = f"{width}x{height}"
    return resolution


class CaptionedImageDataset(BaseDataset):
    """Base of datasets yielding ``{"img", "text"}`` samples.

    Subclasses give ``__len__``, ``image_source(index)`` (a path, or an
    undecoded HF ``datasets`` image) and ``caption_at(index)`` (a caption,
    or a list of them of which each sample draws one), which raises
    ``DataError`` naming the image for an unusable caption.

    Before training, :meth:`preflight` decodes every image once and reads
    every caption, and reports in one message every image that cannot be
    read, has a missing or empty caption, or that the pipeline cannot take
    (smaller than its crop or too thin for any bucket, or longer than wide
    by more than ``MAX_ASPECT_RATIO``, 8:1). Up to ``max(max_bad_images,
    max_bad_fraction × images)`` bad images are skipped, with the report as
    a warning: a fixed count lets a folder of ten photos lose an odd file
    or two, a share lets a hundred thousand lose a few thousand. More is
    one ``DataError`` with the report. A row that goes bad later (a file
    changed during training) is skipped then, with a warning, and counted
    against the same limits. A skipped row's place is taken by the next
    row.

    Images are read turned the way their EXIF orientation says, so their
    size (for buckets, crops and SDXL's size conditioning) is the one
    viewers show.

    Indexed with ``(index, seed)`` (as ``DeterministicSampler`` yields), the
    sample's random transforms draw from ``results["randomness"]``, a
    :class:`~diffengine.randomness.Randomness` of ``seed``, and the seed is
    passed on to the model for its noise; a plain index gets the seed of
    epoch 0 under run seed 0. Python's and numpy's global generators are
    seeded with it too, for third-party transforms that draw from them. A
    key ``(index, seed, weight)`` (as ``AspectRatioBatchSampler`` yields)
    also weighs the sample's loss by ``weight``, times the row's own
    :meth:`loss_weight_at`; either one puts ``loss_weight`` in the sample.

    With a ``BucketResizeCrop`` in the pipeline, :meth:`row_buckets` gives
    each row's aspect-ratio bucket (read from the image headers once), and
    a skipped row is replaced by the next row of its bucket, so that a
    batch keeps one shape.

    With ``cache_latents``, samples carry ``latents`` (the VAE's latent
    distribution of the image after the fixed transforms, flipped as the
    seed draws) instead of ``img``; see :mod:`diffengine.datasets.latent_cache`
    for what is cached and how crops behave. :meth:`build_latent_cache`
    fills the cache; ``DiffEngineRunner`` calls it when it builds the train
    loop.

    Args:
        name (str): Names the dataset in messages.
        pipeline (Sequence[dict]): Transforms applied to each sample.
        max_bad_fraction (float): Share of the images that may be bad and
            skipped rather than an error. Defaults to 0.05.
        cache_latents (bool): Train on latents encoded once and kept on disk
            instead of decoding and encoding each image at every step.
            Defaults to False.
        max_bad_images (int): Number of images that may be bad and skipped
            rather than an error, whatever their share. Defaults to 2.
    """

    def __init__(self, name: str, pipeline: Sequence[dict] = (),
                 max_bad_fraction: float = 0.05,
                 cache_latents: bool = False,
                 max_bad_images: int = 2) -> None:
        self.dataset_name = name
        self.limits = BadImageLimits(max_bad_images, max_bad_fraction)
        self.cache_latents = cache_latents
        self.latent_cache: LatentCache | None = None
        self._latent_keys: list[str | None] = []
        # Built from diffengine's registry, so that a dataset made outside a
        # runner (no default scope) finds diffengine's transforms too.
        transforms = [
            TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline
        ]
        # The transform that picks each image's bucket, if any.
        self.bucketing = next(
            (t for t in transforms if hasattr(t, "bucket_of")), None)
        # from the transforms as configured: cached latents replace them
        self._training_resolution = pipeline_resolution(transforms)
        self.forget_scan()
        super().__init__(pipeline=transforms, serialize_data=False)

    def full_init(self) -> None:
        """Rows are read on demand; nothing to load up front."""
        self._fully_initialized = True

    def prepare(self, context: PrepareContext) -> None:
        """Get ready to train, before the data loader is built: the
        pre-flight scan, the model's text embeddings of the captions and,
        with ``cache_latents``, the latent cache.

        The latents are encoded once by the model's VAE into
        ``work_dir/latent_cache``, where later runs of the same work dir
        find them.
        """
        self.preflight()
        context.model.prepare_text_embeddings(self)
        if not self.cache_latents:
            return
        model = context.model
        start = time.perf_counter()
        self.build_latent_cache(
            model.encode_images, model.latent_encoder_id(),
            osp.join(context.work_dir, "latent_cache"), context.batch_size)
        context.logger.info(
            f"latent cache ready in {time.perf_counter() - start:.1f} s")

    def training_resolution(self) -> str | None:
        """The size trained at, ``WxH``, as the pipeline sets it: the
        bucketing resolution, or else the size of its last crop; None when
        images keep sizes of their own. The same with cached latents."""
        return self._training_resolution

    def image_source(self, idx: int) -> dict | str | bytes:
        """The image of row ``idx`` undecoded, as :func:`open_image` takes."""
        raise NotImplementedError

    def caption_at(self, idx: int) -> str | list[str]:
        """The caption of row ``idx``, or the captions to draw one from.

        Raises:
            DataError: If the row has no usable caption.
        """
        raise NotImplementedError

    def loss_weight_at(self, idx: int) -> float | None:
        """The loss weight of row ``idx``; None (the default) weighs every
        row alike."""
        return None

    def row_buckets(self) -> list[tuple[int, int] | None] | None:
        """The aspect-ratio bucket (height, width) of each row.

        Found by :meth:`preflight` (run here if it has not run), from each
        image's displayed size; a skipped row gets None.

        Returns:
            list | None: One bucket or None per row; None when the pipeline
            has no ``BucketResizeCrop``.
        """
        if self.bucketing is None:
            return None
        self.preflight()
        return self._row_buckets

    def forget_scan(self) -> None:
        """Forget the pre-flight scan, its skipped rows and buckets, as when
        the rows change (DreamBooth's class images arrive)."""
        self.bad_rows: set[int] = set()
        # Images (by _image_key) found bad, and how many there are in all
        # (known after the pre-flight scan).
        self._bad_images: set[str] = set()
        self._num_images: int | None = None
        self._row_buckets: list[tuple[int, int] | None] | None = None
        self._scanned = False

    def preflight(self) -> None:
        """Check every image and caption once, before training.

        Each image is decoded (an image listed several times once) and each
        caption read; the bad ones are reported together and skipped, or
        refused, as the class docstring says. Each process scans its share
        and the results are gathered, so every process skips the same rows
        (as training the same weights on any number of processes needs).
        Runs once: the data loader's workers get the result with the
        dataset.

        Raises:
            DataError: If more images are bad than ``max_bad_images`` and
                ``max_bad_fraction`` allow; the message lists them all.
        """
        if self._scanned:
            return
        start = time.perf_counter()
        keys = [self._image_key(idx) for idx in range(len(self))]
        first_rows: dict[str, int] = {}
        for idx, key in enumerate(keys):
            first_rows.setdefault(key, idx)
        rank, world_size = get_dist_info()
        mine = list(first_rows)[rank::world_size]
        workers = scan_worker_count(len(first_rows), world_size)
        checked = scan_images(
            [self.image_source(first_rows[key]) for key in mine], workers)
        caption_problems = {}
        for idx in range(rank, len(self), world_size):
            try:
                self.caption_at(idx)
            except DataError as err:
                caption_problems[idx] = str(err)
        results: dict[str, tuple[int, int] | str] = {}
        for part_results, part_captions in all_gather_object(
                (dict(zip(mine, checked, strict=True)), caption_problems)):
            results.update(part_results)
            caption_problems.update(part_captions)
        self._apply_scan(keys, results, caption_problems)
        print_log(
            f"pre-flight: {len(first_rows)} images and {len(self)} captions "
            f"of {self.dataset_name!r} checked in "
            f"{time.perf_counter() - start:.1f} s ({workers} process"
            f"{'es' * (workers > 1)})", logger="current")

    def _apply_scan(self, keys: list[str],
                    results: dict[str, tuple[int, int] | str],
                    caption_problems: dict[int, str]) -> None:
        """Skip the rows the scan found bad, or refuse them all; keep each
        good row's bucket."""
        found = find_problems(keys, results, caption_problems,
                              self.pipeline.transforms)
        self._num_images = len(results)
        if found.lines:
            self._report([self._shorten(line) for line in found.lines],
                         len(found.bad_images), len(found.bad_rows))
        self.bad_rows |= found.bad_rows
        self._bad_images |= found.bad_images
        if self.bucketing is not None:
            self._row_buckets = [
                None if idx in self.bad_rows else self.bucketing.bucket_of(
                    *results[key]) for idx, key in enumerate(keys)]
        self._scanned = True

    def _report(self, lines: list[str], num_bad: int, num_rows: int) -> None:
        """Log the pre-flight report, or raise it when too many are bad."""
        total = self._num_images
        # Beyond what one line holds, each on its own line.
        for line in lines[REPORT_LIMIT:]:
            print_log(line, logger="current", level=logging.WARNING)
        if not self.limits.allow(num_bad, total):
            raise DataError(
                f"{num_bad} of {total} images of {self.dataset_name!r} "
                f"cannot be used, {self.limits.excess(num_bad, total)}: "
                f"{format_report(lines)}. Fix or remove them, or raise "
                "max_bad_images.")
        print_log(
            f"pre-flight: skipped {num_bad} of {total} images of "
            f"{self.dataset_name!r} ({num_rows} row{'s' * (num_rows != 1)}): "
            f"{format_report(lines)}", logger="current",
            level=logging.WARNING)

    def _image_key(self, idx: int) -> str:
        """Names row ``idx``'s image: its file, or for an image given as
        bytes its row (and the name it came with)."""
        path, data = path_and_bytes(self.image_source(idx))
        if data is None and path is not None:
            return path
        return f"row {idx}" + (f" ({os.path.basename(path)})" if path else "")

    def _shorten(self, text: str) -> str:
        """``text`` with the dataset's folder left out of the paths in it."""
        folder = self.dataset_name
        if not isinstance(folder, str) or not os.path.isdir(folder):
            return text
        for prefix in (os.path.abspath(folder), os.path.normpath(folder)):
            text = text.replace(prefix + os.sep, "")
        return text

    def get_data_info(self, idx: int) -> dict:
        """Row ``idx`` as ``{"img": PIL.Image (RGB), "text": str}``, or with
        ``latents`` (V×8×h×w, every cached view) in place of ``img`` when
        the latents are cached."""
        if self.latent_cache is not None:
            key = self._latent_keys[idx]
            if key is None:
                raise DataError(
                    f"row {idx} of {self.dataset_name!r} has no cached "
                    "latents: its image could not be read.")
            cached = self.latent_cache.load(key)
            return {**cached, "cached_keys": tuple(cached),
                    "text": self.caption_at(idx), "sample_idx": idx}
        if self.cache_latents:
            raise RuntimeError(
                "cache_latents=True: call build_latent_cache() before "
                "reading samples (DiffEngineRunner does).")
        return {"img": open_image(self.image_source(idx)),
                "text": self.caption_at(idx), "sample_idx": idx}

    def build_latent_cache(self,
                           encode: Callable[[torch.Tensor], torch.Tensor],
                           encoder_id: str,
                           folder: str,
                           batch_size: int = 4) -> None:
        """Encode the images not cached yet, then serve samples from the cache.

        Each process encodes its share of the missing images and waits for
        the others; images cached by an earlier run (same bytes, transforms
        and VAE) are reused, and an image listed several times is encoded
        once.

        Args:
            encode (Callable): V×3×H×W images in [-1, 1] → their latent
                distributions, V×8×h×w (``StableDiffusion.encode_images``).
            encoder_id (str): Changes whenever ``encode`` would give other
                values (``StableDiffusion.latent_encoder_id()``).
            folder (str): Where the cache files live.
            batch_size (int): Images encoded together. Defaults to 4.
        """
        plan = LatentCachePlan(self.pipeline.transforms)
        cache = LatentCache(folder, dict(transforms=plan.settings,
                                         encoder=encoder_id))
        keys: list[str | None] = []
        for idx in range(len(self)):
            if idx in self.bad_rows:
                keys.append(None)
                continue
            try:
                keys.append(cache.key(image_digest(self.image_source(idx))))
            except OSError as err:
                self._skip_bad_row(idx, err)
                keys.append(None)
        # First row of each image that is not cached yet.
        first_row: dict[str, int] = {}
        for idx, key in enumerate(keys):
            if key is not None and not cache.has(key):
                first_row.setdefault(key, idx)
        rank, world_size = get_dist_info()
        batch: list[tuple[str, dict[str, torch.Tensor]]] = []
        for idx in sorted(first_row.values())[rank::world_size]:
            raise_if_stop_requested()  # a stop signal ends caching here
            try:
                image = open_image(self.image_source(idx))
            except OSError as err:
                self._skip_bad_row(idx, err)
                continue
            views = plan.views_of(image)
            if batch and (len(batch) == batch_size
                          or batch[0][1]["img"].shape != views["img"].shape):
                _encode_into(cache, batch, encode)
                batch = []
            batch.append((keys[idx], views))
        if batch:
            _encode_into(cache, batch, encode)
        barrier()
        # Images that no process could encode: each of their rows is bad.
        encoded = {key for key in first_row if cache.has(key)}
        for idx, key in enumerate(keys):
            if key in first_row and key not in encoded:
                keys[idx] = None
                if idx not in self.bad_rows:
                    self._skip_bad_row(idx, OSError(
                        f"image of row {idx} could not be read for the "
                        "latent cache"))
        self._latent_keys = keys
        self.latent_cache = cache
        self.pipeline = plan.pipeline
        reused = len({k for k in keys if k is not None} - encoded)
        print_log(
            f"cache_latents: {len(encoded)} images encoded "
            f"({len(plan.views)} view{'s' * (len(plan.views) > 1)} each), "
            f"{reused} reused, in {folder}",
            logger="current")

    def __getitem__(self, key: int | tuple) -> dict:
        """Sample ``key`` (an index, ``(index, seed)`` or ``(index, seed,
        weight)``) after transforms."""
        if not isinstance(key, tuple):
            key = (key, sample_seed(0, 0, key))
        index, seed, *weight = key
        random.seed(seed)
        np.random.seed(seed % 2**32)
        randomness = Randomness.from_seeds([seed], "data")
        for _ in range(len(self)):
            if index in self.bad_rows:  # skipped by the pre-flight scan
                index = self._next_row(index)
                continue
            try:
                info = self.get_data_info(index)
                break
            except (OSError, DataError) as err:
                self._skip_bad_row(index, err)
                index = self._next_row(index)
        else:
            raise DataError(f"no readable row in {self.dataset_name!r}.")
        if isinstance(info["text"], list):
            info["text"] = info["text"][randomness.randint(
                len(info["text"])).item()]
        info.update(seed=seed, randomness=randomness)
        row_weight = self.loss_weight_at(index)
        if weight or row_weight is not None:
            info["loss_weight"] = (weight[0] if weight else 1.0) * (
                1.0 if row_weight is None else row_weight)
        sample = self.pipeline(info)
        if "loss_weight" in info and "loss_weight" not in sample.get(
                "inputs", {"loss_weight": None}):
            raise ConfigError(
                f"{self.dataset_name!r}: the samples carry a loss_weight that "
                "PackInputs drops; keep 'loss_weight' in its optional_keys.")
        return sample

    def _next_row(self, index: int) -> int:
        """The row that takes the place of bad row ``index``: the next one,
        or with buckets the next one of its bucket."""
        buckets = self._row_buckets
        if buckets is None or buckets[index] is None:
            return (index + 1) % len(self)
        for step in range(1, len(self)):
            row = (index + step) % len(self)
            if buckets[row] == buckets[index] and row not in self.bad_rows:
                return row
        raise DataError(
            f"no readable row in bucket {buckets[index]} of "
            f"{self.dataset_name!r}.")

    def prepare_data(self, idx: int) -> dict:
        return self[idx]

    def _skip_bad_row(self, index: int, err: Exception) -> None:
        """Skip a row found bad while training, counted against the same
        limits as the pre-flight scan."""
        self.bad_rows.add(index)
        self._bad_images.add(self._image_key(index))
        total = self._num_images or len(self)
        if not self.limits.allow(len(self._bad_images), total):
            raise DataError(
                f"{len(self._bad_images)} of {total} images of "
                f"{self.dataset_name!r} are bad, "
                f"{self.limits.excess(len(self._bad_images), total)}; the "
                "latest: "
                f"{self._shorten(str(err))}. Fix or remove them, or raise "
                "max_bad_images.") from err
        print_log(
            f"skipped row {index}: {self._shorten(str(err))} "
            f"({len(self.bad_rows)} of {len(self)} rows skipped so far)",
            logger="current",
            level=logging.WARNING)


def _encode_into(cache: LatentCache,
                 batch: list[tuple[str, dict[str, torch.Tensor]]],
                 encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Encode the views of ``batch`` (key, views) together; save each with
    the other tensors of its views."""
    latents = encode(torch.cat([views["img"] for _, views in batch]))
    for (key, views), image_latents in zip(
            batch, latents.split(len(batch[0][1]["img"])), strict=True):
        extras = {k: v for k, v in views.items() if k != "img"}
        cache.save(key, {"latents": image_latents, **extras})
