"""kohya-ss style image folders: ``image.png`` beside ``image.txt``.

::

    my_data/
      10_sks dog/        # "N_name": every image counts N times an epoch
        001.png  001.txt
        002.jpg          # no .txt: the caption is the name, "sks dog"
      extra.png  extra.txt   # images at the top level count once

Subfolders without a number prefix count once each. Only the top level and
its direct subfolders are read, as kohya-ss does.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from PIL import features

from diffengine.datasets.base import CaptionedImageDataset
from diffengine.datasets.validation_split import split_rows
from diffengine.errors import ConfigError, DataError, MissingFileError
from diffengine.registry import DATASETS

# The files that photos come in and Pillow opens (a GIF's first frame);
# AVIF where this Pillow was built with it.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif",
                    ".tiff", ".gif") + ((".avif", ) if features.check(
                        "avif") else ())
REPEAT_PREFIX = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class CaptionedImage:
    """One image of a kohya folder.

    Attributes:
        path (str): The image file.
        caption (str | None): Its caption; None when it has none.
        repeats (int): Times it is seen per epoch.
        problem (str | None): Why it has no caption, naming the image and
            its caption file, and the fix. Defaults to None.
    """

    path: str
    caption: str | None
    repeats: int
    problem: str | None = None


def read_caption(image_path: str, extension: str,
                 class_caption: str | None = None
                 ) -> tuple[str | None, str | None]:
    """The caption of an image: the stripped text of the caption file
    beside it, else ``class_caption`` (its folder's name).

    Returns:
        tuple: ``(caption, None)``, or ``(None, problem)`` saying what is
        wrong (the caption file missing, empty or not UTF-8) and the fix.
    """
    stem = os.path.splitext(image_path)[0]
    caption_path = stem + extension
    caption_name = os.path.basename(caption_path)
    fix = "or put the image in a folder named N_<caption>"
    if not os.path.isfile(caption_path):
        if class_caption:
            return class_caption, None
        return None, (f"{image_path}: no caption file {caption_name} beside "
                      f"it; write one, {fix}.")
    try:
        # utf-8-sig: Windows editors start UTF-8 files with a byte-order mark
        with open(caption_path, encoding="utf-8-sig") as f:
            caption = f.read().strip()
    except UnicodeDecodeError:
        return None, (f"{image_path}: its caption file {caption_name} is not "
                      "UTF-8 text; save it as UTF-8.")
    if caption or class_caption:
        return caption or class_caption, None
    return None, (f"{image_path}: its caption file {caption_name} is empty; "
                  f"write a caption in it, {fix}.")


def scan_kohya_folder(folder: str,
                      caption_extension: str = ".txt"
                      ) -> list[CaptionedImage]:
    """List the captioned images of a kohya-style folder.

    Top-level images come first, then each subfolder's, in name order. An
    image without a caption is listed with its ``problem`` (the dataset's
    pre-flight scan reports every one).

    Raises:
        FileNotFoundError: If ``folder`` does not exist or holds no image.
    """
    if not os.path.isdir(folder):
        raise MissingFileError(f"dataset folder {folder!r} does not exist.")
    places = [(folder, 1, None)]
    for name in sorted(os.listdir(folder)):
        if os.path.isdir(os.path.join(folder, name)):
            match = REPEAT_PREFIX.match(name)
            repeats, class_caption = (int(match[1]), match[2].strip() or None
                                      ) if match else (1, None)
            places.append((os.path.join(folder, name), repeats, class_caption))
    images = []
    for place, repeats, class_caption in places:
        for name in sorted(os.listdir(place)):
            path = os.path.join(place, name)
            if not name.lower().endswith(IMAGE_EXTENSIONS) or not (
                    os.path.isfile(path)):
                continue
            caption, problem = read_caption(path, caption_extension,
                                            class_caption)
            if repeats > 0:
                images.append(CaptionedImage(path, caption, repeats, problem))
    if not images:
        raise MissingFileError(
            f"{folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images at its "
            "top level or in its subfolders.")
    return images


def write_imagefolder_metadata(folder: str,
                               out: str | None = None,
                               caption_extension: str = ".txt",
                               overwrite: bool = False) -> str:
    """Write ``metadata.jsonl`` so that ``folder`` loads as an imagefolder.

    Each row has ``file_name`` (relative to the metadata file), ``text``
    and ``repeats``. ``HFDataset`` reads each row once; the repeats are kept
    for reference (``KohyaFolderDataset`` applies them).

    Args:
        folder (str): The kohya-style folder.
        out (str, optional): The ``.jsonl`` file; it must lie in ``folder``
            or above it. Defaults to ``<folder>/metadata.jsonl``.
        caption_extension (str): Defaults to ".txt".
        overwrite (bool): Replace an existing ``out``. Defaults to False.

    Returns:
        str: The path written.

    Raises:
        ConfigError: If ``out`` exists and ``overwrite`` is False.
        DataError: If images have no caption; the message lists them all.
    """
    out = out or os.path.join(folder, "metadata.jsonl")
    if os.path.exists(out) and not overwrite:
        raise ConfigError(
            f"{out} exists; pass --overwrite to replace it.")
    root = os.path.dirname(os.path.abspath(out))
    images = scan_kohya_folder(folder, caption_extension)
    problems = [image.problem for image in images if image.problem]
    if problems:
        raise DataError(f"{len(problems)} images have no caption: "
                        + " ".join(problems))
    rows = []
    for image in images:
        file_name = os.path.relpath(os.path.abspath(image.path), root)
        if file_name.startswith(".."):
            raise ConfigError(
                f"out={out!r}: {image.path} is not below it; put the "
                "metadata file in the dataset folder.")
        rows.append({"file_name": file_name.replace(os.sep, "/"),
                     "text": image.caption, "repeats": image.repeats})
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


@DATASETS.register_module()
class KohyaFolderDataset(CaptionedImageDataset):
    """Images with same-named ``.txt`` captions, in kohya-ss folders.

    An image in a subfolder named ``N_<name>`` appears N times per epoch;
    without a caption file (or with an empty one) it is captioned
    ``<name>``. Images may be PNG, JPEG, WebP, BMP, TIFF, GIF (the first
    frame) and AVIF where Pillow reads it. An image that cannot be read, has
    no caption or does not fit the pipeline is reported by the pre-flight
    scan and skipped (or refused), and ``(index, seed)`` keys seed the
    sample, as in every ``CaptionedImageDataset``.

    Args:
        dataset (str): The folder.
        caption_extension (str): Extension of the caption files. Defaults
            to ".txt".
        validation_fraction (float): Share of the images (before repeats)
            held out for validation; ``subset`` and ``validation_seed`` as
            in :class:`~diffengine.datasets.HFDataset`. Defaults to 0.
        **options: ``pipeline``, ``max_bad_fraction``, ``max_bad_images``
            and ``cache_latents`` of :class:`CaptionedImageDataset`; an
            image repeated N times is cached once.
    """

    def __init__(self,
                 dataset: str,
                 caption_extension: str = ".txt",
                 validation_fraction: float = 0.0,
                 subset: str = "train",
                 validation_seed: int = 0,
                 **options: Any) -> None:
        images = scan_kohya_folder(dataset, caption_extension)
        self.images = [images[i] for i in split_rows(
            len(images), validation_fraction, subset, validation_seed)]
        # Index → image, each image listed ``repeats`` times.
        self.index = [i for i, image in enumerate(self.images)
                      for _ in range(image.repeats)]
        super().__init__(dataset, **options)

    def __len__(self) -> int:
        return len(self.index)

    def image_source(self, idx: int) -> str:
        """The image file of sample ``idx``."""
        return self.images[self.index[idx]].path

    def caption_at(self, idx: int) -> str:
        """The caption of sample ``idx``.

        Raises:
            DataError: If its image has no caption file or an empty one.
        """
        image = self.images[self.index[idx]]
        if image.problem:
            raise DataError(image.problem)
        return image.caption
