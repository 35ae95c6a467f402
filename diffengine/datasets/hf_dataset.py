"""Captioned image datasets read through HF ``datasets``."""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence

import datasets
import numpy as np
import torch
from mmengine.dataset import BaseDataset
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log

from diffengine.datasets.image import image_digest, open_image
from diffengine.datasets.latent_cache import LatentCache, LatentCachePlan
from diffengine.errors import ConfigError, DataError
from diffengine.registry import DATASETS, TRANSFORMS

# File extensions ``load_dataset`` reads as data files, by builder name.
DATA_FILE_BUILDERS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


def load_hf_dataset(dataset: str, split: str = "train",
                    cache_dir: str | None = None) -> datasets.Dataset:
    """Load a hub id, a local folder (imagefolder) or a local data file."""
    try:
        return _load(dataset, split, cache_dir)
    except ValueError as err:
        # datasets says 'Instruction "train" corresponds to no data!'
        if "corresponds to no data" in str(err):
            raise DataError(f"dataset {dataset!r} has no rows.") from err
        raise


def _load(dataset: str, split: str,
          cache_dir: str | None) -> datasets.Dataset:
    if os.path.isfile(dataset):
        ext = os.path.splitext(dataset)[1].lower()
        if ext not in DATA_FILE_BUILDERS:
            raise ConfigError(
                f"dataset={dataset!r}: cannot read {ext!r} files; use a "
                f"folder or one of {sorted(DATA_FILE_BUILDERS)}.")
        return datasets.load_dataset(
            DATA_FILE_BUILDERS[ext], data_files=dataset, split=split,
            cache_dir=cache_dir)
    if os.path.isdir(dataset):
        return datasets.load_dataset(dataset, split=split, cache_dir=cache_dir)
    if os.path.isabs(dataset) or dataset.startswith("."):
        raise ConfigError(
            f"dataset={dataset!r} does not exist; give a hub id, an image "
            "folder with metadata.jsonl/metadata.csv, or a data file.")
    return datasets.load_dataset(dataset, split=split, cache_dir=cache_dir)


@DATASETS.register_module()
class HFDataset(BaseDataset):
    """Images with captions, from a hub id, an image folder or a data file.

    Images are read undecoded and opened here, so that a bad file can be
    named and any mode (RGBA, palette, CMYK, 16-bit) converted to RGB. A row
    whose image is missing, truncated or not an image, or whose caption is
    empty or not a string, is skipped with a warning naming it (the next row
    takes its place) and counted; more than ``max_bad_fraction`` of the rows
    bad is an error.

    Indexed with ``(index, seed)`` (as ``DeterministicSampler`` yields), the
    random transforms of the sample are seeded with ``seed`` and the seed is
    passed on to the model for its noise.

    With ``cache_latents``, samples carry ``latents`` (the VAE's latent
    distribution of the image after the fixed transforms, flipped as the
    seed draws) instead of ``img``; see :mod:`diffengine.datasets.latent_cache`
    for what is cached and how crops behave. :meth:`build_latent_cache`
    fills the cache; ``DiffEngineRunner`` calls it when it builds the train
    loop.

    Args:
        dataset (str): Hub id, local imagefolder (images beside
            ``metadata.jsonl`` or ``metadata.csv``), or a local data file
            (csv/json/jsonl/parquet) whose image column holds paths.
        image_column (str): Column with the images. Defaults to "image".
        caption_column (str): Column with the captions; a row whose caption
            is a list gets one of them at random. Defaults to "text".
        split (str): Defaults to "train".
        cache_dir (str, optional): HF datasets cache. Defaults to None.
        pipeline (Sequence[dict]): Transforms applied to each sample.
        max_bad_fraction (float): Largest share of bad rows that is skipped
            rather than an error. Defaults to 0.05.
        cache_latents (bool): Train on latents encoded once and kept on disk
            instead of decoding and encoding each image at every step.
            Defaults to False.
    """

    def __init__(self,
                 dataset: str,
                 image_column: str = "image",
                 caption_column: str = "text",
                 split: str = "train",
                 cache_dir: str | None = None,
                 pipeline: Sequence[dict] = (),
                 max_bad_fraction: float = 0.05,
                 cache_latents: bool = False) -> None:
        self.dataset_name = dataset
        self.max_bad_fraction = max_bad_fraction
        self.cache_latents = cache_latents
        self.latent_cache: LatentCache | None = None
        self._latent_keys: list[str | None] = []
        self.bad_rows: set[int] = set()
        self.image_column = image_column
        self.caption_column = caption_column
        self.hf_dataset = load_hf_dataset(dataset, split, cache_dir)
        columns = self.hf_dataset.column_names
        for key, column in (("image_column", image_column),
                            ("caption_column", caption_column)):
            if column not in columns:
                raise ConfigError(
                    f"{key}={column!r} is not a column of {dataset!r}; its "
                    f"columns are {columns}.")
        if len(self.hf_dataset) == 0:
            raise DataError(f"dataset {dataset!r} has no rows.")
        feature = self.hf_dataset.features[image_column]
        if isinstance(feature, datasets.Image):
            self.hf_dataset = self.hf_dataset.cast_column(
                image_column, datasets.Image(decode=False))
        self.image_root = dataset if os.path.isdir(dataset) else (
            os.path.dirname(os.path.abspath(dataset))
            if os.path.isfile(dataset) else None)
        # Built from diffengine's registry, so that a dataset made outside a
        # runner (no default scope) finds diffengine's transforms too.
        transforms = [
            TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline
        ]
        super().__init__(pipeline=transforms, serialize_data=False)

    def full_init(self) -> None:
        """Rows stay in the HF dataset (memory-mapped); nothing to load."""
        self._fully_initialized = True

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def caption(self, row: dict, idx: int) -> str:
        """The caption of ``row`` (number ``idx``), one at random of a list."""
        caption = row[self.caption_column]
        if isinstance(caption, (list, tuple)):
            captions = [c for c in caption if isinstance(c, str) and c]
            caption = random.choice(captions) if captions else None
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(
                f"row {idx} of {self.dataset_name!r} has no usable caption "
                f"in column {self.caption_column!r}: {caption!r}.")
        return caption

    def image_source(self, row: dict) -> dict | str:
        """The image of ``row`` undecoded: a path, or ``{"bytes", "path"}``."""
        source = row[self.image_column]
        if isinstance(source, str) and self.image_root and not os.path.isabs(
                source):
            source = os.path.join(self.image_root, source)
        return source

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
            row = self._caption_rows[idx]
            return {"latents": self.latent_cache.load(key),
                    "text": self.caption(row, idx), "sample_idx": idx}
        if self.cache_latents:
            raise RuntimeError(
                "cache_latents=True: call build_latent_cache() before "
                "reading samples (DiffEngineRunner does).")
        row = self.hf_dataset[idx]
        return {"img": open_image(self.image_source(row)),
                "text": self.caption(row, idx), "sample_idx": idx}

    def build_latent_cache(self,
                           encode: Callable[[torch.Tensor], torch.Tensor],
                           encoder_id: str,
                           folder: str,
                           batch_size: int = 4) -> None:
        """Encode the images not cached yet, then serve samples from the cache.

        Each process encodes its share of the missing images and waits for
        the others; images cached by an earlier run (same bytes, transforms
        and VAE) are reused.

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
                source = self.image_source(self.hf_dataset[idx])
                keys.append(cache.key(image_digest(source)))
            except OSError as err:
                self._skip_bad_row(idx, err)
                keys.append(None)
        missing = [i for i, k in enumerate(keys)
                   if k is not None and not cache.has(k)]
        rank, world_size = get_dist_info()
        batch: list[tuple[str, torch.Tensor]] = []
        for idx in missing[rank::world_size]:
            try:
                image = open_image(self.image_source(self.hf_dataset[idx]))
            except OSError as err:
                self._skip_bad_row(idx, err)
                continue
            views = plan.view_tensors(image)
            if batch and (len(batch) == batch_size
                          or batch[0][1].shape != views.shape):
                _encode_into(cache, batch, encode)
                batch = []
            batch.append((keys[idx], views))
        if batch:
            _encode_into(cache, batch, encode)
        barrier()
        failed = 0
        for idx, key in enumerate(keys):
            if key is not None and not cache.has(key):
                keys[idx] = None
                failed += 1
                if idx not in self.bad_rows:
                    self._skip_bad_row(idx, OSError(
                        f"image of row {idx} could not be read for the "
                        "latent cache"))
        self._latent_keys = keys
        self._caption_rows = self.hf_dataset.select_columns(
            [self.caption_column])
        self.latent_cache = cache
        self.pipeline = plan.pipeline
        encoded = len(missing) - failed
        print_log(
            f"cache_latents: {encoded} images encoded "
            f"({len(plan.views)} views each), "
            f"{len(keys) - keys.count(None) - encoded} reused, in {folder}",
            logger="current")

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample ``key`` (an index, or ``(index, seed)``) after transforms."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed % 2**32)
        for _ in range(len(self)):
            try:
                info = self.get_data_info(index)
                break
            except (OSError, DataError) as err:
                self._skip_bad_row(index, err)
                index = (index + 1) % len(self)
        else:
            raise DataError(f"no readable row in {self.dataset_name!r}.")
        if seed is not None:
            info["seed"] = seed
        return self.pipeline(info)

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


def _encode_into(cache: LatentCache, batch: list[tuple[str, torch.Tensor]],
                 encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Encode the views of ``batch`` (key, V×3×H×W) together; save each."""
    latents = encode(torch.cat([views for _, views in batch]))
    for (key, _), image_latents in zip(
            batch, latents.split(len(batch[0][1])), strict=True):
        cache.save(key, image_latents)
