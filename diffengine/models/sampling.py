"""What a model does with its diffusers pipeline: images as trained so far.

A model family mixes in :class:`Sampling`: :meth:`Sampling.pipeline` builds
its pipeline over the in-memory (adapted) modules, the ``*_defaults_for``
class methods say how a base draws where nothing else says (the same for
``infer()``, the sample hook, class images and ``generate``), and
:meth:`Sampling.infer` draws through :func:`diffengine.inference.generate`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline

from diffengine.errors import ConfigError
from diffengine.generation import DEFAULT_SEEDS, GenerationOptions
from diffengine.inference import generate, quiet_loading
from diffengine.models.utils.text_embedding_cache import DROP_OPTION


class Sampling:
    """Generation for a ``LatentDiffusionModel``, which gives
    ``pipeline_class``, ``base_model``, ``pipeline_parts()``,
    ``pipeline_call_options()``, ``denoiser`` and
    ``text_encoders_dropped``.

    Attributes:
        sampling_defaults (dict): The family's ``num_inference_steps`` and
            ``guidance_scale`` where nothing else gives them.
    """

    sampling_defaults: ClassVar[dict[str, Any]]

    def pipeline(self) -> DiffusionPipeline:
        """A diffusers pipeline over the in-memory (adapted) modules.

        The scheduler is loaded from the base model exactly as
        ``DiffusionPipeline.from_pretrained(base)`` loads it, so images match
        what users get after ``load_lora_weights``.
        """
        with quiet_loading():
            pipe = self.pipeline_class.from_pretrained(
                self.base_model, **self.pipeline_parts())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def sampling_defaults_for(cls, denoiser_config: Any = None
                              ) -> dict[str, Any]:
        """``num_inference_steps`` and ``guidance_scale`` when neither the
        call nor the config gives them, for a base whose denoiser has
        ``denoiser_config`` (None: the family's :attr:`sampling_defaults`).
        A family whose variants sample differently (Flux [dev] and
        [schnell]) tells them apart here."""
        return dict(cls.sampling_defaults)

    @classmethod
    def call_defaults_for(cls, denoiser_config: Any = None
                          ) -> dict[str, Any]:
        """More arguments of the pipeline's call (beyond steps and
        guidance) that a base whose denoiser has ``denoiser_config``
        samples with when none are given, where they differ from the
        pipeline's own defaults; none for most families."""
        return {}

    @classmethod
    def generation_defaults_for(cls, denoiser_config: Any = None
                                ) -> GenerationOptions:
        """The options a base whose denoiser has ``denoiser_config`` draws
        with where nothing else gives them (:meth:`sampling_defaults_for`
        and :meth:`call_defaults_for`): the same for :meth:`infer`, the
        sample hook, class images and ``demo``
        (``inference.generation_defaults``)."""
        return GenerationOptions(
            **cls.sampling_defaults_for(denoiser_config),
            seeds=DEFAULT_SEEDS,
            pipeline_arguments=cls.call_defaults_for(denoiser_config))

    def generation_defaults(self) -> GenerationOptions:
        """The options :meth:`infer` draws with where none are given: this
        base's (:meth:`generation_defaults_for` its denoiser), with the
        pipeline arguments that condition samples as training is
        (:meth:`pipeline_call_options`)."""
        return self.generation_defaults_for(
            self.denoiser.config).overridden_by(GenerationOptions(
                pipeline_arguments=self.pipeline_call_options()))

    @torch.no_grad()
    def infer(self,
              prompts: list[str],
              seed: int | Sequence[int] | None = None,
              options: GenerationOptions | None = None,
              output_type: str = "pil",
              progress=None,
              **given: Any) -> list[np.ndarray]:
        """Generate images with the model as trained so far.

        Images come from :func:`diffengine.inference.generate`, as the
        ``demo`` tool's do, so a step folder loaded in ``demo`` reproduces
        them.

        Args:
            prompts (list[str]): The prompts.
            seed (int | Sequence[int], optional): One image per prompt and
                seed, in place of ``options``' seeds; each seeds its own CPU
                generator, so that the same seed gives the same image on any
                device. Defaults to those of ``options``, else 0.
            options (GenerationOptions, optional): How to draw; what it
                leaves out, :meth:`generation_defaults` (steps and guidance
                of the base, the size of the denoiser's sample size × the
                VAE scale factor). Defaults to None.
            output_type (str): ``"pil"`` returns H×W×3 uint8 arrays, ``"np"``
                float arrays in [0, 1]. Defaults to ``"pil"``.
            progress (tqdm, optional): A bar advanced at every denoising
                step (``inference.sampling_progress``). Defaults to None.
            **given: Options by the names ``GenerationOptions.of`` takes
                (``num_inference_steps``, ``guidance_scale``, ``height``,
                ``width``, ``negative_prompt``), in place of ``options``'.

        Returns:
            list[np.ndarray]: The images of the first prompt (one per seed),
            then those of the second, and so on.
        """
        if self.text_encoders_dropped:
            raise ConfigError(
                f"infer() needs the text encoders, which {DROP_OPTION}=True "
                "freed: sample the step folders with demo after training, or "
                "leave the option off (and drop VisualizationHook from "
                "custom_hooks while it is on).")
        options = self.generation_defaults().overridden_by(
            options).overridden_by(GenerationOptions.of(seed=seed, **given))
        was_training = self.training
        self.eval()
        try:
            pipe = self.pipeline()
            return [
                image for prompt in prompts
                for image in generate(pipe, prompt, options=options,
                                      output_type=output_type,
                                      progress=progress)
            ]
        finally:
            self.train(was_training)
