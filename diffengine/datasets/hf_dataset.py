"""Captioned image datasets read through HF ``datasets``."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import datasets
from datasets.data_files import EmptyDatasetError

from diffengine.datasets.base import CaptionedImageDataset
from diffengine.datasets.validation_split import split_rows
from diffengine.errors import ConfigError, DataError
from diffengine.hub import hub_download
from diffengine.registry import DATASETS

# File extensions ``load_dataset`` reads as data files, by builder name.
DATA_FILE_BUILDERS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
# Files that make a folder an imagefolder (captions beside image paths).
IMAGEFOLDER_METADATA = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def load_hf_dataset(dataset: str, split: str = "train",
                    cache_dir: str | None = None) -> datasets.Dataset:
    """Load a hub id, a local folder (imagefolder) or a local data file."""
    try:
        with hub_download(dataset, "--cfg-options train_dataloader.dataset."
                          "dataset=/path/to/an/image/folder"):
            return _load(dataset, split, cache_dir)
    except EmptyDatasetError as err:
        raise DataError(
            f"dataset {dataset!r} holds no data files: add images with a "
            "metadata.jsonl of captions, or use type='KohyaFolderDataset' "
            "for images beside .txt captions.") from err
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
        if any(os.path.isfile(os.path.join(dataset, name))
               for name in IMAGEFOLDER_METADATA):
            # Named, not inferred: ``datasets`` picks the builder of the most
            # common file type, "text" for images beside .txt captions.
            return datasets.load_dataset("imagefolder", data_dir=dataset,
                                         split=split, cache_dir=cache_dir)
        return datasets.load_dataset(dataset, split=split, cache_dir=cache_dir)
    if os.path.isabs(dataset) or dataset.startswith("."):
        raise ConfigError(
            f"dataset={dataset!r} does not exist; give a hub id, an image "
            "folder with metadata.jsonl/metadata.csv, or a data file.")
    return datasets.load_dataset(dataset, split=split, cache_dir=cache_dir)


class HFImageRows:
    """The rows of an HF dataset whose images are read undecoded.

    Undecoded, so that a bad file can be named and any mode converted to
    RGB by :func:`~diffengine.datasets.image.open_image`.

    Args:
        dataset (str): As for :func:`load_hf_dataset`.
        columns (dict[str, str]): The columns the rows need, by option name
            (``{"image_column": "image", ...}``); the first is the image.
        split (str): The split to read.
        cache_dir (str, optional): HF datasets cache.

    Raises:
        ConfigError: If a column is missing; the message lists the columns.
        DataError: If the dataset has no rows.
    """

    def __init__(self, dataset: str, columns: dict[str, str], split: str,
                 cache_dir: str | None) -> None:
        self.rows = load_hf_dataset(dataset, split, cache_dir)
        names = self.rows.column_names
        for key, column in columns.items():
            if column not in names:
                raise ConfigError(
                    f"{key}={column!r} is not a column of {dataset!r}; its "
                    f"columns are {names}.")
        if len(self.rows) == 0:
            raise DataError(f"dataset {dataset!r} has no rows.")
        self.image_column = next(iter(columns.values()))
        if isinstance(self.rows.features[self.image_column], datasets.Image):
            self.rows = self.rows.cast_column(self.image_column,
                                              datasets.Image(decode=False))
        self.image_root = dataset if os.path.isdir(dataset) else (
            os.path.dirname(os.path.abspath(dataset))
            if os.path.isfile(dataset) else None)
        # Where the captions come from, for messages: the metadata file of
        # an imagefolder, else the dataset.
        self.caption_source = next(
            (os.path.join(dataset, name) for name in IMAGEFOLDER_METADATA
             if os.path.isdir(dataset)
             and os.path.isfile(os.path.join(dataset, name))), dataset)

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices), in their order."""
        self.rows = self.rows.select(rows)

    def image_source(self, idx: int) -> dict | str:
        """The image of row ``idx`` undecoded: a path (relative ones from
        the dataset's folder), or ``{"bytes", "path"}``."""
        source = self.rows[idx][self.image_column]
        if isinstance(source, str) and self.image_root and not os.path.isabs(
                source):
            source = os.path.join(self.image_root, source)
        return source


@DATASETS.register_module()
class HFDataset(CaptionedImageDataset):
    """Images with captions, from a hub id, an image folder or a data file.

    Images are read undecoded and opened here, so that a bad file can be
    named and any mode (RGBA, palette, CMYK, 16-bit) converted to RGB, and
    turned by its EXIF orientation. A row whose image is missing, truncated
    or not an image, or does not fit the pipeline, or whose caption is empty
    or not a string, is reported by the pre-flight scan and skipped and
    counted, or refused (see ``CaptionedImageDataset``).

    Args:
        dataset (str): Hub id, local imagefolder (images beside
            ``metadata.jsonl`` or ``metadata.csv``), or a local data file
            (csv/json/jsonl/parquet) whose image column holds paths.
        image_column (str): Column with the images. Defaults to "image".
        caption_column (str): Column with the captions; a row whose caption
            is a list gets one of them at random. Defaults to "text".
        split (str): Defaults to "train".
        cache_dir (str, optional): HF datasets cache. Defaults to None.
        validation_fraction (float): Share of the rows held out for
            validation; ``subset`` picks the rows read (``"train"`` or
            ``"validation"``) and ``validation_seed`` seeds the draw (see
            :func:`~diffengine.datasets.validation_split.split_rows`).
            Defaults to 0 (none held out).
        **options: ``pipeline``, ``max_bad_fraction``, ``max_bad_images``
            and ``cache_latents`` of :class:`CaptionedImageDataset`.
    """

    def __init__(self,
                 dataset: str,
                 image_column: str = "image",
                 caption_column: str = "text",
                 split: str = "train",
                 cache_dir: str | None = None,
                 validation_fraction: float = 0.0,
                 subset: str = "train",
                 validation_seed: int = 0,
                 **options: Any) -> None:
        self.image_column = image_column
        self.caption_column = caption_column
        self.images = HFImageRows(dataset, dict(image_column=image_column,
                                                caption_column=caption_column),
                                  split, cache_dir)
        rows = split_rows(len(self.images), validation_fraction, subset,
                          validation_seed)
        if len(rows) < len(self.images):
            self.images.select(rows)
        self.hf_dataset = self.images.rows
        # Captions alone, read without touching the image column.
        self._captions = self.hf_dataset.select_columns([caption_column])
        super().__init__(dataset, **options)

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def caption_at(self, idx: int) -> str | list[str]:
        """The caption of row ``idx``; of a list, its usable captions (each
        sample draws one)."""
        caption = self._captions[idx][self.caption_column]
        if isinstance(caption, (list, tuple)):
            captions = [c for c in caption if isinstance(c, str) and c.strip()]
            if captions:
                return captions
            caption = None
        if not isinstance(caption, str) or not caption.strip():
            what = ("is empty" if isinstance(caption, str) or caption in (
                None, []) else f"is not text: {caption!r}")
            raise DataError(
                f"{self._image_key(idx)}: its caption ({self.caption_column!r}"
                f" in {self.images.caption_source}) {what}; write one, or "
                "remove the row.")
        return caption

    def image_source(self, idx: int) -> dict | str:
        """The image of row ``idx`` undecoded: a path, or
        ``{"bytes", "path"}``."""
        return self.images.image_source(idx)
