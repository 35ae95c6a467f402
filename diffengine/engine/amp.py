"""Running AMP configs on machines without CUDA."""
from __future__ import annotations

import warnings

import torch
from mmengine.config import Config


def fall_back_from_amp_without_cuda(cfg: Config) -> None:
    """Replace ``AmpOptimWrapper`` by fp32 ``OptimWrapper`` when CUDA is off.

    mmengine's ``AmpOptimWrapper`` asserts CUDA; fp16 autocast brings nothing
    on a CPU. The same configs thus run unchanged there, in fp32, with one
    warning. ``cfg`` is changed in place.
    """
    optim_wrapper = cfg.get("optim_wrapper")
    if (optim_wrapper is None or optim_wrapper.get("type") != "AmpOptimWrapper"
            or torch.cuda.is_available()):
        return
    warnings.warn(
        "CUDA is not available: training in fp32 with OptimWrapper instead "
        f"of AmpOptimWrapper (dtype={optim_wrapper.get('dtype')}).",
        stacklevel=2)
    optim_wrapper.type = "OptimWrapper"
    for key in ("dtype", "loss_scale", "use_fsdp"):
        optim_wrapper.pop(key, None)
