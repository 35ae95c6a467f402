"""What the flow-matching transformer families (SD3, Flux) share."""
from __future__ import annotations

from typing import ClassVar

from diffusers import FlowMatchEulerDiscreteScheduler

from diffengine.models.editors.base import LatentDiffusionModel
from diffengine.models.editors.t5 import T5Conditioning


class FlowMatchingTransformer(T5Conditioning, LatentDiffusionModel):
    """A family whose denoiser is a ``transformer`` trained by flow
    matching (``FlowMatchSchedule`` over diffusers'
    ``FlowMatchEulerDiscreteScheduler``), with prompts through T5."""

    denoiser_name = "transformer"
    scheduler_class = FlowMatchEulerDiscreteScheduler
    default_schedule: ClassVar[dict] = dict(type="FlowMatchSchedule")
