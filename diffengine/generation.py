"""What decides a generated image besides the prompt and the weights.

:class:`GenerationOptions` carries the steps, guidance, size, negative
prompt, seeds and the family's further arguments of the pipeline's call
wherever they travel: the sample hook, ``infer()``, ``generate``,
DreamBooth's class images and ``demo``. Its one merge, :meth:`GenerationOptions.
overridden_by`, layers them: the base's defaults (its family's
``generation_defaults_for`` its denoiser), then what a step's training
sampled with (:func:`recorded_generation_options`), then what the caller
gives.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffengine.adapter_file import read_adapter_file

#: The options that the sample hook's config, ``infer()`` and ``generate``
#: name as :class:`GenerationOptions` does (seeds as ``seed``).
SAMPLE_SETTINGS = ("num_inference_steps", "guidance_scale", "height",
                   "width", "negative_prompt")
#: Seeds where nothing gives any: one image, seed 0.
DEFAULT_SEEDS = (0, )


@dataclass(frozen=True)
class GenerationOptions:
    """How to draw images of a prompt; None for "not given", which a layer
    below fills (:meth:`overridden_by`).

    Attributes:
        num_inference_steps (int, optional): Denoising steps.
        guidance_scale (float, optional): Classifier-free guidance (the
            embedded guidance of FLUX.1 [dev]).
        height (int, optional): Image height; None keeps the pipeline's.
        width (int, optional): Image width; None keeps the pipeline's.
        negative_prompt (str, optional): None draws without one.
        seeds (tuple[int, ...], optional): One image per seed, each from its
            own CPU generator.
        pipeline_arguments (Mapping[str, Any]): More arguments of the
            pipeline's call, e.g. SD3's and Flux's ``max_sequence_length``.
    """

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    seeds: tuple[int, ...] | None = None
    pipeline_arguments: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, seed: int | Sequence[int] | None = None,
           **given: Any) -> GenerationOptions:
        """The options under the names the sample hook's config, ``infer()``
        and ``generate`` use: ``seed`` an int or a list, the names of
        :data:`SAMPLE_SETTINGS`, and any other name an argument of the
        pipeline's call."""
        seeds = None if seed is None else (
            (seed, ) if isinstance(seed, int) else tuple(seed))
        settings = {k: given.pop(k) for k in SAMPLE_SETTINGS if k in given}
        return cls(**settings, seeds=seeds, pipeline_arguments=given)

    def overridden_by(self, other: GenerationOptions | None
                      ) -> GenerationOptions:
        """These options with each option that ``other`` gives (not None)
        in place of this one's; the pipeline arguments merged, ``other``'s
        winning."""
        if other is None:
            return self
        given = {f.name: getattr(other, f.name)
                 for f in dataclasses.fields(other)
                 if f.name != "pipeline_arguments"
                 and getattr(other, f.name) is not None}
        return dataclasses.replace(
            self, **given, pipeline_arguments={
                **self.pipeline_arguments, **other.pipeline_arguments})

    def call_arguments(self) -> dict[str, Any]:
        """Keyword arguments of a pipeline's call, all but the prompt: the
        options, one image per seed with a CPU generator seeded with it
        (so that an image depends on its seed only, not on the batch it is
        drawn in nor on the device)."""
        seeds = DEFAULT_SEEDS if self.seeds is None else self.seeds
        return dict(
            negative_prompt=self.negative_prompt,
            height=self.height,
            width=self.width,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            num_images_per_prompt=len(seeds),
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            **self.pipeline_arguments)


def recorded_generation_options(lora: str) -> GenerationOptions:
    """The options a step's training drew its samples with.

    Read from the ``training_config`` the step file records: the first
    ``VisualizationHook`` of its ``custom_hooks``, whose arguments carry the
    names :meth:`GenerationOptions.of` takes; none given for a file without
    one.
    """
    recorded = read_adapter_file(lora).training.get("training_config")
    hooks = json.loads(recorded).get("custom_hooks") or [] if recorded else []
    hook = next((h for h in hooks if isinstance(h, dict) and str(
        h.get("type", "")).endswith("VisualizationHook")), None)
    if hook is None:
        return GenerationOptions()
    return GenerationOptions.of(**{k: hook[k] for k in (*SAMPLE_SETTINGS,
                                                        "seed") if k in hook})
