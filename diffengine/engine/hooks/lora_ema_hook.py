"""Exponential moving average of the trainable (LoRA) weights."""
from __future__ import annotations

import logging

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from diffengine.errors import ConfigError
from diffengine.registry import HOOKS


@HOOKS.register_module()
class LoRAEMAHook(Hook):
    """Keep an exponential moving average of the adapters; save it as the
    model.

    After every iteration ``ema = (1 − momentum) · ema + momentum · w`` (the
    convention of mmengine's ``EMAHook``) for each trainable weight w; the
    frozen base is not copied. Following mmengine's checkpoint contract, a
    checkpoint's ``state_dict`` holds the averages and its
    ``ema_state_dict`` the trained weights, so the ``step{N}/`` folders
    (written from the checkpoint) and the sample images hold the averaged
    model, and resuming restores both exactly.

    Args:
        momentum (float): Weight of the newest weights, in (0, 1]; 1 keeps
            exactly the trained weights. Defaults to 1e-4.
        begin_iter (int): Iterations before averaging starts; until then
            the average follows the weights. Defaults to 0.
    """

    # Before the checkpoint hook (VERY_LOW) and the sample images (NORMAL),
    # as mmengine's EMAHook.
    priority = "ABOVE_NORMAL"

    def __init__(self, momentum: float = 1e-4, begin_iter: int = 0) -> None:
        if not 0 < momentum <= 1:
            raise ConfigError(
                f"LoRAEMAHook momentum={momentum} must be in (0, 1].")
        if begin_iter < 0:
            raise ConfigError(
                f"LoRAEMAHook begin_iter={begin_iter} must be >= 0.")
        self.momentum = momentum
        self.begin_iter = begin_iter
        self.weights: dict[str, torch.nn.Parameter] = {}
        self.average: dict[str, torch.Tensor] = {}

    def before_run(self, runner) -> None:
        # The trainable parameters, named as the model's state_dict names them.
        self.weights = {n: p for n, p in runner.bare_model.named_parameters()
                        if p.requires_grad}
        self.average = {n: p.detach().clone() for n, p in self.weights.items()}

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        # runner.iter is the iteration just trained, counted from 0
        momentum = self.momentum if runner.iter >= self.begin_iter else 1.0
        with torch.no_grad():
            for name, weight in self.weights.items():
                self.average[name].lerp_(weight, momentum)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        checkpoint["ema_state_dict"] = state
        checkpoint["state_dict"] = type(state)(
            (k, self.average[k].detach().cpu().clone()) for k in state)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "ema_state_dict" in checkpoint:
            average = checkpoint["state_dict"]
            checkpoint["state_dict"] = checkpoint.pop("ema_state_dict")
        else:
            if runner.resuming:
                print_log(
                    "the checkpoint holds no EMA weights: the average starts "
                    "from its weights", logger="current",
                    level=logging.WARNING)
            average = checkpoint["state_dict"]
        self.average = {
            name: average[name].detach().to(weight.device, weight.dtype,
                                            copy=True)
            for name, weight in self.weights.items()
        }
