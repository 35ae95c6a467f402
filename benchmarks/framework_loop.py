"""The framework side: a config trained by ``DiffEngineRunner`` exactly as
``mim train`` does (``tools/train.py``'s argument merge, the registry build,
``runner.train()``), with a hook that marks the end of each step."""
from __future__ import annotations

import os

import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from benchmarks.measure import StepClock, summary
from benchmarks.plain_loop import is_flux_folder
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

# The same for an SD3 model (one with a transformer): SD3.5 Medium's, LoRA
# on both attentions of every block.
SD3_CONFIG = os.path.join(REPO, "configs", "stable_diffusion_3_lora",
                          "stable_diffusion_3_5_medium_lora_pokemon_blip.py")
# The same for a FLUX.1 model: [dev]'s, LoRA on the attention of every
# block. On a CPU its bfloat16 base and gradient checkpointing are turned
# off (see family_options), as the plain loop runs.
FLUX_CONFIG = os.path.join(REPO, "configs", "flux_lora",
                           "flux_dev_lora_pokemon_blip.py")


def is_sd3(model: str) -> bool:
    """Whether ``model`` is an SD3 folder (a transformer, not a UNet)."""
    return os.path.isdir(os.path.join(model, "transformer"))


def config_for(model: str) -> str:
    """The seed config of ``model``'s family."""
    if is_flux_folder(model):
        return FLUX_CONFIG
    if is_sd3(model):
        return SD3_CONFIG
    sdxl = os.path.isdir(os.path.join(model, "text_encoder_2"))
    return SDXL_CONFIG if sdxl else CONFIG


def family_options(model: str, rank: int, use_t5: bool,
                   max_sequence_length: int,
                   mixed_precision: str | None = None) -> list[str]:
    """The adapter's rank, and for SD3 what diffusers' SD3 script does:
    logit-normal timesteps (the seed config's too), T5 or not, T5's tokens
    per prompt. For FLUX.1 the rank, T5's tokens and the frozen base's
    dtype as the plain loop keeps it (bfloat16 under bf16 mixed precision,
    else float32), without gradient checkpointing."""
    if is_flux_folder(model):
        weight_dtype = "bfloat16" if mixed_precision == "bf16" else None
        return [f"model.transformer_lora_config.r={rank}",
                f"model.transformer_lora_config.lora_alpha={rank}",
                f"model.max_sequence_length={max_sequence_length}",
                f"model.weight_dtype={weight_dtype}",
                "model.gradient_checkpointing=False"]
    if not is_sd3(model):
        return [f"model.unet_lora_config.r={rank}",
                f"model.unet_lora_config.lora_alpha={rank}"]
    return [f"model.transformer_lora_config.r={rank}",
            f"model.transformer_lora_config.lora_alpha={rank}",
            "model.timesteps_generator.type=LogitNormalTimeSteps",
            f"model.use_t5={use_t5}",
            f"model.max_sequence_length={max_sequence_length}"]


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
                     options: tuple[str, ...] = (), config: str | None = None,
                     use_t5: bool = True, max_sequence_length: int = 77,
                     launcher: str = "none") -> Config:
    """``config`` (default: the seed config of the model's family) set to
    the benchmark's work, through ``tools/train.py``'s ``--cfg-options``
    (``options`` come last, e.g. ``model.weight_dtype=bfloat16``).
    ``use_t5`` and ``max_sequence_length`` apply to SD3 models,
    ``max_sequence_length`` to FLUX.1; ``launcher`` is
    ``tools/train.py``'s (``"pytorch"`` under torchrun)."""
    config = config or config_for(model)
    argv = [
        config, "--work-dir", work_dir, "--launcher", launcher,
        "--cfg-options",
        f"model.model={model}",
        *family_options(model, rank, use_t5, max_sequence_length,
                        mixed_precision),
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
