"""Running AMP configs on machines without CUDA."""
from __future__ import annotations

import warnings

import torch
from mmengine.config import Config


def fall_back_from_amp_without_cuda(cfg: Config) -> None:
    """Train in fp32 what a config sets up for fp16 on CUDA, when CUDA is off.

    mmengine's ``AmpOptimWrapper`` asserts CUDA, and fp16 autocast brings
    nothing on a CPU: it becomes fp32 ``OptimWrapper``. A frozen base kept
    in float16 (``model.weight_dtype``) runs slower than float32 on CPUs: it
    is kept in float32 (bfloat16 stays, CPUs run it well). The same configs
    thus run unchanged on a CPU, with one warning. ``cfg`` is changed in
    place.
    """
    if torch.cuda.is_available():
        return
    changes = []
    optim_wrapper = cfg.get("optim_wrapper")
    if optim_wrapper is not None and optim_wrapper.get(
            "type") == "AmpOptimWrapper":
        changes.append("with OptimWrapper instead of AmpOptimWrapper "
                       f"(dtype={optim_wrapper.get('dtype')})")
        optim_wrapper.type = "OptimWrapper"
        for key in ("dtype", "loss_scale", "use_fsdp"):
            optim_wrapper.pop(key, None)
    model = cfg.get("model")
    if model is not None and model.get("weight_dtype") == "float16":
        changes.append("the frozen base in float32 instead of "
                       "weight_dtype='float16'")
        model.weight_dtype = None
    if changes:
        warnings.warn(
            f"CUDA is not available: training in fp32, {', '.join(changes)}.",
            stacklevel=2)
