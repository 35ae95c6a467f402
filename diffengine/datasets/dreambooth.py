"""DreamBooth: a few images of one subject, with prior preservation."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from mmengine.logging import print_log

from diffengine.datasets.base import CaptionedImageDataset
from diffengine.datasets.class_images import (
    class_image_folder,
    class_images_key,
    generate_class_images,
    list_images,
    write_manifest,
)
from diffengine.datasets.hf_dataset import HFImageRows
from diffengine.datasets.preparation import PrepareContext
from diffengine.errors import ConfigError
from diffengine.generation import SAMPLE_SETTINGS, GenerationOptions
from diffengine.registry import DATASETS

if TYPE_CHECKING:  # for the hint only: a dataset needs no model to import
    from diffengine.models.editors.base import LatentDiffusionModel

# What ``class_generation`` may set: options of ``infer`` and the number of
# images generated together.
GENERATION_OPTIONS = (*SAMPLE_SETTINGS, "batch_size")


@DATASETS.register_module()
class DreamBoothDataset(CaptionedImageDataset):
    """Instance images captioned with one prompt, and class images.

    DreamBooth (Ruiz et al., 2023) teaches a model a subject from a few
    images captioned with a rare token ("a photo of sks dog"). With
    ``class_prompt``, prior preservation trains on images of the subject's
    class ("a photo of a dog") too, made by the base model itself, so that
    the model keeps what the class looks like: each class sample's loss is
    weighted ``prior_loss_weight`` (its ``loss_weight``), and the batch loss
    is the mean over instance and class samples, as kohya-ss's scripts
    compute it. An epoch pairs every instance sample with a class sample,
    as diffusers' ``train_dreambooth_lora.py`` does: it holds
    max(instance images, class images) samples of each, the smaller set in
    turn, so 12 instance and 8 class images make 12 + 12 = 24 samples (4
    class images twice) and 5 and 200 make 200 + 200 (each instance image
    40 times). Each row is its own sample with its own seed, and the rows
    may go to different aspect-ratio buckets.

    Class images come from ``class_data_dir``, used as is;
    ``DiffEngineRunner`` generates the missing ones (up to
    ``num_class_images``) with the base model before training. When
    ``class_data_dir`` is None they go to ``work_dir/class_images/<class
    prompt>-<key>``, keyed by the base model, a fingerprint of its weights,
    the scheduler, the size and the generation settings, so that later
    runs that would draw the same images reuse them and others draw their
    own.

    Args:
        dataset (str): The instance images: a hub id (e.g.
            ``"diffusers/dog-example"``), a folder of images, an imagefolder
            or a data file, read as ``HFDataset`` reads them; captions in it
            are ignored.
        instance_prompt (str): The caption of every instance image.
        class_prompt (str, optional): The caption of the class images; None
            trains without prior preservation. Defaults to None.
        class_data_dir (str, optional): The folder of class images (your
            own photos, say), used as is. Defaults to None
            (``work_dir/class_images/<class prompt>-<key>``).
        num_class_images (int): Class images to train on. Defaults to 200.
        prior_loss_weight (float): Weight of each class sample's loss.
            Defaults to 1.
        class_generation (dict, optional): How missing class images are
            generated: ``num_inference_steps`` and ``guidance_scale`` (the
            base's ``sampling_defaults_for``: 50 and 7.5 for SD 1.x and
            SDXL, 28 and 7.0 for SD3, 4 and 0.0 for FLUX.1 [schnell]),
            ``negative_prompt``, ``height``, ``width`` (the model's),
            ``batch_size`` (4). Image k is drawn
            with seed k. Defaults to None.
        image_column (str): Column of the instance images. Defaults to
            "image".
        split (str): Defaults to "train".
        cache_dir (str, optional): HF datasets cache. Defaults to None.
        **kwargs: ``pipeline``, ``max_bad_fraction``, ``max_bad_images``
            and ``cache_latents`` of :class:`CaptionedImageDataset`; the
            pre-flight scan checks instance and class images alike.
    """

    def __init__(self,
                 dataset: str,
                 instance_prompt: str,
                 class_prompt: str | None = None,
                 class_data_dir: str | None = None,
                 num_class_images: int = 200,
                 prior_loss_weight: float = 1.0,
                 class_generation: dict | None = None,
                 image_column: str = "image",
                 split: str = "train",
                 cache_dir: str | None = None,
                 **kwargs: Any) -> None:
        for key, prompt in (("instance_prompt", instance_prompt),
                            ("class_prompt", class_prompt)):
            if prompt is not None and (not isinstance(prompt, str)
                                       or not prompt.strip()):
                raise ConfigError(f"{key}={prompt!r} must be a non-empty "
                                  "string.")
        if class_prompt is not None and num_class_images < 1:
            raise ConfigError(
                f"num_class_images={num_class_images} must be >= 1 with a "
                "class_prompt (or set class_prompt=None).")
        unknown = sorted(set(class_generation or {}) - set(GENERATION_OPTIONS))
        if unknown:
            raise ConfigError(
                f"class_generation options {unknown} are unknown; it takes "
                f"{list(GENERATION_OPTIONS)}.")
        self.instance_prompt = instance_prompt
        self.class_prompt = class_prompt
        self.class_data_dir = class_data_dir
        self.num_class_images = num_class_images
        self.prior_loss_weight = prior_loss_weight
        self.class_generation = dict(class_generation or {})
        self.image_column = image_column
        self.instances = HFImageRows(dataset, dict(image_column=image_column),
                                     split, cache_dir)
        self.class_images: list[str] = []
        self.rows: list[tuple[bool, int]] = []
        self._find_class_images()
        super().__init__(dataset, **kwargs)

    @property
    def needs_class_images(self) -> bool:
        """Whether prior preservation lacks class images still."""
        return (self.class_prompt is not None
                and len(self.class_images) < self.num_class_images)

    def prepare(self, context: PrepareContext) -> None:
        """Generate the missing class images, once, then prepare as any
        captioned dataset (:meth:`CaptionedImageDataset.prepare`).

        The class images are drawn by the model before it trains (the base
        model: a fresh LoRA changes nothing), into a folder of the work dir
        that a later run or a resume of it finds.
        """
        start = time.perf_counter()
        self.prepare_class_images(context.model, context.work_dir)
        if self.class_prompt is not None:
            context.logger.info(
                f"class images ready in {time.perf_counter() - start:.1f} s")
        super().prepare(context)

    def prepare_class_images(self, model: LatentDiffusionModel,
                             work_dir: str) -> None:
        """Generate the missing class images with ``model`` and train on
        them.

        Args:
            model (LatentDiffusionModel): The base model (before training,
                its LoRA changes nothing); its ``infer`` draws the images.
            work_dir (str): Where the default class folder lies.
        """
        if self.class_prompt is None:
            return
        given = dict(self.class_generation)
        batch_size = given.pop("batch_size", 4)
        options = GenerationOptions.of(**given)
        if self.class_data_dir is None:
            key = class_images_key(model.pipeline(), model.base_model,
                                   self.class_prompt, options)
            self.class_data_dir = class_image_folder(work_dir, key)
            write_manifest(self.class_data_dir, key)

        def generate(seeds: Sequence[int]) -> list[np.ndarray]:
            return model.infer([self.class_prompt], seed=list(seeds),
                               options=options)

        generate_class_images(self.class_data_dir, self.num_class_images,
                              generate, batch_size)
        self._find_class_images()
        print_log(self.epoch_summary(), logger="current")

    def epoch_summary(self) -> str:
        """What an epoch holds, in words and numbers, for the log."""
        each = len(self) // 2
        return (
            f"DreamBooth: {len(self.instances)} instance images "
            f"({self.instance_prompt!r}) and {len(self.class_images)} class "
            f"images ({self.class_prompt!r}, loss weight "
            f"{self.prior_loss_weight}); an epoch pairs each of {each} "
            f"instance samples with a class sample: {len(self)} samples")

    def _find_class_images(self) -> None:
        """Read the class folder and lay out the rows: instance rows then
        class rows, as many of each."""
        if self.class_prompt is not None and self.class_data_dir is not None:
            self.class_images = list_images(
                self.class_data_dir)[:self.num_class_images]
        if self.needs_class_images and self.class_data_dir is not None:
            print_log(
                f"DreamBoothDataset: {len(self.class_images)} of "
                f"{self.num_class_images} class images in "
                f"{self.class_data_dir}; DiffEngineRunner generates the rest "
                "before training", logger="current")
        num_instances = len(self.instances)
        num_classes = len(self.class_images)
        length = max(num_instances, num_classes)
        self.rows = [(False, i % num_instances) for i in range(length)]
        if num_classes:
            self.rows += [(True, i % num_classes) for i in range(length)]
        self.forget_scan()

    def __len__(self) -> int:
        return len(self.rows)

    def image_source(self, idx: int) -> dict | str:
        """The instance or class image of row ``idx``, undecoded."""
        is_class, number = self.rows[idx]
        if is_class:
            return self.class_images[number]
        return self.instances.image_source(number)

    def caption_at(self, idx: int) -> str:
        """The class prompt for a class row, else the instance prompt."""
        return self.class_prompt if self.rows[idx][0] else self.instance_prompt

    def loss_weight_at(self, idx: int) -> float | None:
        """``prior_loss_weight`` for a class row, 1 for an instance row; None
        without prior preservation."""
        if self.class_prompt is None:
            return None
        return self.prior_loss_weight if self.rows[idx][0] else 1.0
