"""Every leaf config builds, and every key in it reaches the code."""
import glob
import inspect
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from diffengine.registry import HOOKS, MODELS, RUNNERS
from tests.conftest import REPO
from tools.train import merge_args, parse_args

LEAF_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"),
                         recursive=True)
    if f"{os.sep}_base_{os.sep}" not in p)
# Runner arguments, and runner_type, which picks the Runner class.
RUNNER_KEYS = set(inspect.signature(Runner.__init__).parameters) - {"self"}
RUNNER_KEYS.add("runner_type")
# Model options that build a component, and the attribute holding it.
COMPONENTS = {"loss": "loss_fn", "noise_generator": "noise_generator",
              "timesteps_generator": "timesteps_generator",
              "schedule": "schedule"}
# Names the configs define to build other keys from.
HELPER_KEYS = {"train_pipeline", "vis_backends"}


def data_options(config, data):
    """Point the config's dataset at ``data``; DreamBooth draws 2 class
    images in 2 steps."""
    dataset = f"train_dataloader.dataset.dataset={data}"
    if Config.fromfile(config).train_dataloader.dataset.type == (
            "DreamBoothDataset"):
        return [dataset, "train_dataloader.dataset.num_class_images=2",
                "train_dataloader.dataset.class_generation."
                "num_inference_steps=2"]
    return [dataset, "train_dataloader.dataset.caption_column=text"]


def load(config, tiny_sd, data, *options):
    args = parse_args([config, "--cfg-options", f"model.model={tiny_sd}",
                       *data_options(config, data), *options])
    return merge_args(Config.fromfile(config), args)


def test_there_are_leaf_configs():
    names = {os.path.basename(p) for p in LEAF_CONFIGS}
    assert {"stable_diffusion_v15_lora_pokemon_blip.py",
            "stable_diffusion_v15_lora_textencoder_pokemon_blip.py",
            "tiny_sd_lora_demo.py", "stable_diffusion_xl_lora_pokemon_blip.py",
            "stable_diffusion_xl_lora_textencoder_pokemon_blip.py",
            "stable_diffusion_3_5_medium_lora_pokemon_blip.py",
            "stable_diffusion_3_5_medium_lora_textencoder_pokemon_blip.py",
            "stable_diffusion_3_5_large_lora_pokemon_blip.py",
            "flux_dev_lora_pokemon_blip.py",
            "flux_schnell_lora_pokemon_blip.py",
            "flux_dev_lora_all_linear_pokemon_blip.py"} <= names


@pytest.mark.parametrize("config", LEAF_CONFIGS,
                         ids=[os.path.basename(p) for p in LEAF_CONFIGS])
def test_leaf_config_builds(config, tiny_sd, tiny_sdxl, tiny_sd3, tiny_flux,
                            shapes_data, tmp_path):
    tiny = {"StableDiffusion": tiny_sd, "StableDiffusionXL": tiny_sdxl,
            "StableDiffusion3": tiny_sd3,
            "Flux": tiny_flux}[Config.fromfile(config).model.type]
    cfg = load(config, tiny, shapes_data, "train_dataloader.num_workers=0")
    unknown = set(cfg.keys()) - RUNNER_KEYS - HELPER_KEYS
    assert not unknown, f"keys no code reads: {unknown}"
    cfg.work_dir = str(tmp_path)
    runner = RUNNERS.build(cfg)  # builds the model and the hooks
    assert type(runner).__name__ == cfg.runner_type
    model = runner.model
    denoiser = model.denoiser_name
    assert f"{denoiser}_lora_config" in cfg.model
    parts = [(denoiser, f"{denoiser}_lora_config")] + [
        (name, "text_encoder_lora_config") for name in model.text_encoder_names]
    for part, lora in parts:
        if lora in cfg.model:
            assert model.adapter_configs[part].r == cfg.model[lora].r
    # the technique components and their options reach the model
    for key, attribute in COMPONENTS.items():
        if key in cfg.model:
            component = getattr(model, attribute)
            options = dict(cfg.model[key])
            assert type(component).__name__ == options.pop("type")
            assert {k: getattr(component, k) for k in options} == options
    assert model.input_perturbation_gamma == cfg.model.get(
        "input_perturbation_gamma", 0.0)
    loop = runner.build_train_loop(cfg.train_cfg)
    assert [type(t).__name__ for t in loop.dataloader.dataset.pipeline.transforms
            ] == [t["type"] for t in cfg.train_dataloader.dataset.pipeline]
    batch = next(iter(loop.dataloader))
    assert len(batch["inputs"]["text"]) == cfg.train_dataloader.batch_size
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    assert optim_wrapper.get_lr()["lr"] == [cfg.optim_wrapper.optimizer.lr]
    hooks = {type(h).__name__ for h in runner.hooks}
    assert "LoRACheckpointHook" in hooks
    assert {h["type"] for h in cfg.custom_hooks} <= hooks


def test_cfg_options_reach_the_built_objects(tiny_sd, shapes_data):
    config = os.path.join(REPO, "configs", "stable_diffusion_lora",
                          "stable_diffusion_v15_lora_textencoder_pokemon_blip.py")
    cfg = load(config, tiny_sd, shapes_data,
               "model.unet_lora_config.r=3",
               "model.unet_lora_config.lora_alpha=6",
               "model.unet_lora_config.lora_dropout=0.1",
               "model.text_encoder_lora_config.r=5",
               "model.text_encoder_lora_config.target_modules=[q_proj,v_proj]",
               "train_dataloader.dataset.image_column=image",
               "train_dataloader.batch_size=3",
               "train_dataloader.num_workers=0",
               "train_cfg.max_epochs=7",
               "default_hooks.checkpoint.interval=2",
               "optim_wrapper.optimizer.lr=0.002",
               "randomness.seed=11",
               "custom_hooks=[]")
    init_default_scope("diffengine")
    model = MODELS.build(cfg.model)
    unet, text = model.adapter_configs["unet"], model.adapter_configs["text_encoder"]
    assert (unet.r, unet.lora_alpha, unet.lora_dropout) == (3, 6, 0.1)
    assert text.r == 5 and set(text.target_modules) == {"q_proj", "v_proj"}
    assert (cfg.train_dataloader.batch_size,
            cfg.train_dataloader.num_workers) == (3, 0)
    assert cfg.train_cfg.max_epochs == 7
    assert HOOKS.build(cfg.default_hooks.checkpoint).interval == 2
    assert cfg.optim_wrapper.optimizer.lr == 0.002
    assert cfg.randomness.seed == 11
    assert cfg.custom_hooks == []
    # the LoRA step folders do not depend on custom_hooks
    assert cfg.default_hooks.checkpoint.type == "LoRACheckpointHook"


def test_a_typo_in_a_lora_option_fails_the_build(tiny_sd, shapes_data):
    cfg = load(LEAF_CONFIGS[0], tiny_sd, shapes_data,
               "model.unet_lora_config.lora_alfa=4")
    init_default_scope("diffengine")
    with pytest.raises(ValueError, match=r"unet_lora_config\.lora_alfa is not "
                       r"an option .* Did you mean 'lora_alpha'\?"):
        MODELS.build(cfg.model)


def test_speed_and_cache_options_reach_the_built_objects(tiny_sd, shapes_data,
                                                         tmp_path):
    config = os.path.join(REPO, "configs", "stable_diffusion_lora",
                          "tiny_sd_lora_demo.py")
    cfg = load(config, tiny_sd, shapes_data,
               "model.weight_dtype=bfloat16",
               "model.channels_last=True",
               "model.gradient_checkpointing=True",
               "model.compile_unet=True",
               "model.cache_text_embeddings=True",
               "train_dataloader.dataset.cache_latents=True",
               "train_dataloader.dataset.validation_fraction=0",
               "train_dataloader.num_workers=0",
               "custom_hooks=[]")
    cfg.work_dir = str(tmp_path)
    runner = RUNNERS.build(cfg)
    model = runner.model
    assert {p.dtype for p in model.unet.parameters() if not p.requires_grad} == {
        torch.bfloat16}
    assert model.unet.conv_in.weight.is_contiguous(
        memory_format=torch.channels_last)
    assert model.unet.is_gradient_checkpointing
    assert model.unet._compiled_call_impl is not None  # compiled in place
    assert model.text_embeddings is not None
    loop = runner.build_train_loop(cfg.train_cfg)
    assert loop.dataloader.dataset.latent_cache is not None
    batch = next(iter(loop.dataloader))
    assert batch["inputs"]["latents"][0].shape == (8, 32, 32)
    assert len(list((tmp_path / "latent_cache").glob("*/*"))) == 24
