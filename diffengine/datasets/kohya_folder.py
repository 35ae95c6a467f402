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
from collections.abc import Sequence
from dataclasses import dataclass

from diffengine.datasets.base import CaptionedImageDataset
from diffengine.datasets.validation_split import split_rows
from diffengine.errors import DataError, MissingFileError
from diffengine.registry import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REPEAT_PREFIX = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class CaptionedImage:
    """One image of a kohya folder.

    Attributes:
        path (str): The image file.
        caption (str): Its caption.
        repeats (int): Times it is seen per epoch.
    """

    path: str
    caption: str
    repeats: int


def read_caption(image_path: str, extension: str) -> str | None:
    """The stripped text of the caption file beside an image, if any."""
    caption_path = os.path.splitext(image_path)[0] + extension
    if not os.path.isfile(caption_path):
        return None
    with open(caption_path, encoding="utf-8") as f:
        return f.read().strip() or None


def scan_kohya_folder(folder: str,
                      caption_extension: str = ".txt"
                      ) -> list[CaptionedImage]:
    """List the captioned images of a kohya-style folder.

    Top-level images come first, then each subfolder's, in name order.

    Raises:
        FileNotFoundError: If ``folder`` does not exist or holds no image.
        ValueError: If an image has no caption and its folder no name to
            use instead; the message names the image.
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
            caption = read_caption(path, caption_extension) or class_caption
            if caption is None:
                raise DataError(
                    f"{path} has no caption: write "
                    f"{os.path.splitext(name)[0]}{caption_extension} beside "
                    "it, or put it in a folder named N_<caption>.")
            if repeats > 0:
                images.append(CaptionedImage(path, caption, repeats))
    if not images:
        raise MissingFileError(
            f"{folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images at its "
            "top level or in its subfolders.")
    return images


def write_imagefolder_metadata(folder: str,
                               out: str | None = None,
                               caption_extension: str = ".txt") -> str:
    """Write ``metadata.jsonl`` so that ``folder`` loads as an imagefolder.

    Each row has ``file_name`` (relative to the metadata file), ``text``
    and ``repeats``. ``HFDataset`` reads each row once; the repeats are kept
    for reference (``KohyaFolderDataset`` applies them).

    Args:
        folder (str): The kohya-style folder.
        out (str, optional): The ``.jsonl`` file; it must lie in ``folder``
            or above it. Defaults to ``<folder>/metadata.jsonl``.
        caption_extension (str): Defaults to ".txt".

    Returns:
        str: The path written.
    """
    out = out or os.path.join(folder, "metadata.jsonl")
    root = os.path.dirname(os.path.abspath(out))
    images = scan_kohya_folder(folder, caption_extension)
    with open(out, "w", encoding="utf-8") as f:
        for image in images:
            file_name = os.path.relpath(os.path.abspath(image.path), root)
            if file_name.startswith(".."):
                raise DataError(
                    f"out={out!r}: {image.path} is not below it; put the "
                    "metadata file in the dataset folder.")
            f.write(json.dumps({
                "file_name": file_name.replace(os.sep, "/"),
                "text": image.caption,
                "repeats": image.repeats,
            }, ensure_ascii=False) + "\n")
    return out


@DATASETS.register_module()
class KohyaFolderDataset(CaptionedImageDataset):
    """Images with same-named ``.txt`` captions, in kohya-ss folders.

    An image in a subfolder named ``N_<name>`` appears N times per epoch;
    without a caption file it is captioned ``<name>``. Unreadable images
    are skipped and counted, and ``(index, seed)`` keys seed the sample, as
    in every ``CaptionedImageDataset``.

    Args:
        dataset (str): The folder.
        caption_extension (str): Extension of the caption files. Defaults
            to ".txt".
        pipeline (Sequence[dict]): Transforms applied to each sample.
        max_bad_fraction (float): Largest share of bad rows that is skipped
            rather than an error. Defaults to 0.05.
        cache_latents (bool): Train on latents encoded once and kept on disk
            (see ``CaptionedImageDataset``); an image repeated N times is
            encoded once. Defaults to False.
        validation_fraction (float): Share of the images held out for
            validation (a seeded draw, before repeats); 0 holds none out.
            Defaults to 0.
        subset (str): With ``validation_fraction``, ``"train"`` reads the
            other images and ``"validation"`` the held-out ones. Defaults to
            "train".
        validation_seed (int): Seeds which images are held out. Defaults
            to 0.
    """

    def __init__(self,
                 dataset: str,
                 caption_extension: str = ".txt",
                 pipeline: Sequence[dict] = (),
                 max_bad_fraction: float = 0.05,
                 cache_latents: bool = False,
                 validation_fraction: float = 0.0,
                 subset: str = "train",
                 validation_seed: int = 0) -> None:
        images = scan_kohya_folder(dataset, caption_extension)
        self.images = [images[i] for i in split_rows(
            len(images), validation_fraction, subset, validation_seed)]
        # Index → image, each image listed ``repeats`` times.
        self.index = [i for i, image in enumerate(self.images)
                      for _ in range(image.repeats)]
        super().__init__(dataset, pipeline, max_bad_fraction, cache_latents)

    def __len__(self) -> int:
        return len(self.index)

    def image_source(self, idx: int) -> str:
        """The image file of sample ``idx``."""
        return self.images[self.index[idx]].path

    def caption_at(self, idx: int) -> str:
        """The caption of sample ``idx``."""
        return self.images[self.index[idx]].caption
