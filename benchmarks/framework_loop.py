"""The framework side: a config trained by ``DiffEngineRunner`` exactly as
``mim train`` does (``tools/train.py``'s argument merge, the registry build,
``runner.train()``), with a hook that marks the end of each step."""
from __future__ import annotations

import os

import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from benchmarks.measure import StepClock, summary
from diffengine.registry import RUNNERS
from tools.train import merge_args, parse_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SD 1.5 LoRA on its attention, AdamW lr 1e-4, clip 1.0, the default
# runtime: what diffusers' script does, as a diffengine config.
CONFIG = os.path.join(REPO, "configs", "stable_diffusion_lora",
                      "stable_diffusion_v15_lora_pokemon_blip.py")
# The same for an SDXL model (one with text_encoder_2).
SDXL_CONFIG = os.path.join(REPO, "configs", "stable_diffusion_xl_lora",
                           "stable_diffusion_xl_lora_pokemon_blip.py")


def config_for(model: str) -> str:
    """The seed config of ``model``'s family."""
    sdxl = os.path.isdir(os.path.join(model, "text_encoder_2"))
    return SDXL_CONFIG if sdxl else CONFIG


class StepClockHook(Hook):
    """Marks the end of each iteration, after every other hook's work."""

    priority = "LOWEST"

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        self.clock.mark()


def framework_config(model: str, data: str, resolution: int, batch_size: int,
                     rank: int, steps: int, warmup: int, work_dir: str,
                     num_workers: int = 0, mixed_precision: str | None = None,
                     options: tuple[str, ...] = (), config: str | None = None
                     ) -> Config:
    """``config`` (default: the seed config of the model's family) set to
    the benchmark's work, through ``tools/train.py``'s ``--cfg-options``
    (``options`` come last, e.g. ``model.weight_dtype=bfloat16``)."""
    config = config or config_for(model)
    argv = [
        config, "--work-dir", work_dir, "--cfg-options",
        f"model.model={model}",
        f"model.unet_lora_config.r={rank}",
        f"model.unet_lora_config.lora_alpha={rank}",
        f"train_dataloader.dataset.dataset={data}",
        "train_dataloader.dataset.caption_column=text",
        f"train_dataloader.dataset.pipeline.0.size={resolution}",
        f"train_dataloader.dataset.pipeline.1.size={resolution}",
        f"train_dataloader.batch_size={batch_size}",
        f"train_dataloader.num_workers={num_workers}",
        "custom_hooks=[]",
        "default_hooks.checkpoint.by_epoch=False",
        # no checkpoint while measuring; the plain loop saves none either
        f"default_hooks.checkpoint.interval={warmup + steps + 1}",
        "default_hooks.checkpoint.save_last=False",
        "log_processor.by_epoch=False",
        *options,
    ]
    if mixed_precision is not None:
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[mixed_precision]
        argv += ["optim_wrapper.type=AmpOptimWrapper",
                 f"optim_wrapper.dtype={dtype}"]
    cfg = merge_args(Config.fromfile(config), parse_args(argv))
    cfg.train_cfg = dict(by_epoch=False, max_iters=warmup + steps)
    return cfg


def run_framework(device: str = "cpu", **kwargs) -> dict:
    """Train ``warmup + steps`` steps; return :func:`summary`'s dict."""
    device = torch.device(device)
    cfg = framework_config(**kwargs)
    runner = RUNNERS.build(cfg)
    clock = StepClock(device)
    runner.register_hook(StepClockHook(clock))
    runner.train()
    return summary(clock, kwargs["warmup"], kwargs["batch_size"], device)
