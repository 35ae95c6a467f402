"""The optimizer over the LoRA parameters alone, fused on CUDA."""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from diffengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

# Optimizers with a fused CUDA implementation (one kernel for all tensors).
FUSED_OPTIMIZERS = {"Adam", "AdamW"}


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LoRAOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, fitted to a frozen base.

    - The optimizer holds only the parameters that train. mmengine's
      default hands it every parameter, and each step then walks SD 1.5's
      ~1,100 frozen tensors in gradient clipping and in AdamW's setup
      (milliseconds: a tenth of a GPU step).
    - Adam and AdamW run fused (``fused=True``) when the model is on CUDA,
      unless the config sets ``fused`` or ``foreach``.

    ``DiffEngineRunner`` uses it unless the config names a ``constructor``.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = getattr(model, "module", model)
        optimizer_cfg = self.optimizer_cfg
        on_cuda = next(module.parameters()).is_cuda
        if (on_cuda and optimizer_cfg.get("type") in FUSED_OPTIMIZERS
                and not {"fused", "foreach"} & set(optimizer_cfg)):
            self.optimizer_cfg = dict(optimizer_cfg, fused=True)
        optim_wrapper = super().__call__(model)
        optimizer = optim_wrapper.optimizer
        groups = [dict(group, params=[p for p in group["params"]
                                      if p.requires_grad])
                  for group in optimizer.param_groups]
        optimizer.param_groups = [g for g in groups if g["params"]]
        return optim_wrapper
