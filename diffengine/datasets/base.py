"""What every captioned-image dataset of diffengine shares."""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from mmengine.dataset import BaseDataset
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log

from diffengine.datasets.image import (
    image_digest,
    image_size,
    open_image,
    path_and_bytes,
)
from diffengine.datasets.latent_cache import LatentCache, LatentCachePlan
from diffengine.datasets.samplers import sample_seed
from diffengine.errors import ConfigError, DataError
from diffengine.randomness import Randomness
from diffengine.registry import TRANSFORMS
from diffengine.stop import raise_if_stop_requested


class CaptionedImageDataset(BaseDataset):
    """Base of datasets yielding ``{"img", "text"}`` samples.

    Subclasses give ``__len__``, ``image_source(index)`` (a path, or an
    undecoded HF ``datasets`` image) and ``caption_at(index)`` (a caption,
    or a list of them of which each sample draws one), which raises
    ``DataError`` for an unusable caption. A row whose image cannot be read
    (``OSError``) or whose caption is unusable is skipped with a warning
    naming it (the next row takes its place) and counted; more than
    ``max_bad_fraction`` of the rows bad is an error.

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
        max_bad_fraction (float): Largest share of bad rows that is skipped
            rather than an error. Defaults to 0.05.
        cache_latents (bool): Train on latents encoded once and kept on disk
            instead of decoding and encoding each image at every step.
            Defaults to False.
    """

    def __init__(self, name: str, pipeline: Sequence[dict] = (),
                 max_bad_fraction: float = 0.05,
                 cache_latents: bool = False) -> None:
        self.dataset_name = name
        self.max_bad_fraction = max_bad_fraction
        self.cache_latents = cache_latents
        self.latent_cache: LatentCache | None = None
        self._latent_keys: list[str | None] = []
        self.bad_rows: set[int] = set()
        # Built from diffengine's registry, so that a dataset made outside a
        # runner (no default scope) finds diffengine's transforms too.
        transforms = [
            TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline
        ]
        # The transform that picks each image's bucket, if any.
        self.bucketing = next(
            (t for t in transforms if hasattr(t, "bucket_of")), None)
        self._row_buckets: list[tuple[int, int] | None] | None = None
        super().__init__(pipeline=transforms, serialize_data=False)

    def full_init(self) -> None:
        """Rows are read on demand; nothing to load up front."""
        self._fully_initialized = True

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

        Read once from the image headers (an image listed several times is
        read once); a row whose image cannot be read, or is too small for
        any bucket, is skipped and counted and gets None.

        Returns:
            list | None: One bucket or None per row; None when the pipeline
            has no ``BucketResizeCrop``.
        """
        if self.bucketing is None:
            return None
        if self._row_buckets is None:
            sizes: dict[str, tuple[int, int]] = {}
            buckets: list[tuple[int, int] | None] = []
            for idx in range(len(self)):
                try:
                    source = self.image_source(idx)
                    path = path_and_bytes(source)[0]
                    if path is None or path not in sizes:
                        size = image_size(source)
                        if path is not None:
                            sizes[path] = size
                    buckets.append(self.bucketing.bucket_of(
                        *sizes.get(path, size)))
                except (OSError, DataError) as err:
                    self._skip_bad_row(idx, err)
                    buckets.append(None)
            self._row_buckets = buckets
        return self._row_buckets

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
        self.bad_rows.add(index)
        limit = self.max_bad_fraction * len(self)
        if len(self.bad_rows) > limit:
            raise DataError(
                f"{len(self.bad_rows)} bad rows in {self.dataset_name!r}, "
                f"more than max_bad_fraction={self.max_bad_fraction} of "
                f"{len(self)}; the latest: {err}. Fix or remove them, or "
                "raise max_bad_fraction.") from err
        print_log(
            f"skipped row {index}: {err} ({len(self.bad_rows)} of "
            f"{len(self)} rows skipped so far)",
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
