"""The training objective as a component: ``model.schedule=dict(type=...)``.

A schedule turns a sampler's noise level into the denoiser's timestep and
gives the noisy input, the target and the loss context; a model family
names its default (:attr:`LatentDiffusionModel.default_schedule`).
"""
from diffengine.models.schedules.base import DiffusionSchedule, build_schedule
from diffengine.models.schedules.ddpm import DDPMSchedule
from diffengine.models.schedules.flow_match import FlowMatchSchedule

__all__ = [
    "DDPMSchedule",
    "DiffusionSchedule",
    "FlowMatchSchedule",
    "build_schedule",
]
