"""End to end: `mim train diffengine` as a user runs it, then diffusers."""
import glob
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from safetensors import safe_open

from diffengine.engine.checkpoint import load_checkpoint_file
from diffengine.inference import load_base_pipeline
from diffengine.registry import MODELS
from tests.conftest import REPO
from tests.test_docs import FENCE, rewrite, run_command
from tools.train import parse_args

MIM = os.path.join(os.path.dirname(sys.executable), "mim")
LORA_DIR = os.path.join(REPO, "configs", "stable_diffusion_lora")


def mim_train(config, cwd, *cfg_options):
    command = [MIM, "train", "diffengine", config]
    if cfg_options:
        command += ["--cfg-options", *cfg_options]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def trained_model(config, work_dir, checkpoint, *cfg_options):
    """The model of ``config`` with the adapters of ``checkpoint`` loaded."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(
            parse_args([config, "--cfg-options", *cfg_options]).cfg_options)
    init_default_scope("diffengine")
    model = MODELS.build(cfg.model)
    state = load_checkpoint_file(os.path.join(work_dir, checkpoint))[
        "state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not any("lora_" in k for k in missing)
    return model


@pytest.mark.parametrize("config, parts", [
    ("stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py",
     {"unet"}),
    ("stable_diffusion_lora/stable_diffusion_v15_lora_textencoder_pokemon_blip"
     ".py", {"unet", "text_encoder"}),
    ("stable_diffusion_xl_lora/stable_diffusion_xl_lora_pokemon_blip.py",
     {"unet"}),
    ("stable_diffusion_xl_lora/stable_diffusion_xl_lora_textencoder_pokemon_"
     "blip.py", {"unet", "text_encoder", "text_encoder_2"}),
], ids=["sd15", "sd15-text-encoder", "sdxl", "sdxl-text-encoders"])
def test_seed_config_trains_and_loads_in_diffusers(config, parts, tmp_path,
                                                   tiny_sd, tiny_sdxl,
                                                   mixed_data):
    config = os.path.join(REPO, "configs", config)
    cfg = Config.fromfile(config)
    tiny = tiny_sdxl if cfg.model.type == "StableDiffusionXL" else tiny_sd
    model_options = [
        f"model.model={tiny}",
        # alpha != r: the strength only survives if alpha is saved
        "model.unet_lora_config.lora_alpha=4",
    ]
    if "text_encoder" in parts:
        model_options.append("model.text_encoder_lora_config.lora_alpha=16")
    log = mim_train(
        config, tmp_path, *model_options,
        f"work_dir={tmp_path / 'work'}",
        f"train_dataloader.dataset.dataset={mixed_data}",
        "train_dataloader.dataset.caption_column=text",
        "train_dataloader.dataset.pipeline.0.size=64",
        "train_dataloader.dataset.pipeline.1.size=64",
        "train_dataloader.num_workers=0",
        "train_cfg.max_epochs=2",
        "custom_hooks=[]")
    # mim ran the script that the editable install put where it looks
    assert os.path.join("diffengine", ".mim", "tools", "train.py") in log
    assert "CUDA is not available: training in fp32" in log
    work = tmp_path / "work"
    # 6 images: an epoch of 2 iterations at batch 4 (SD), 3 at batch 2 (SDXL)
    per_epoch = -(-6 // cfg.train_dataloader.batch_size)
    last = f"step{2 * per_epoch}"
    assert sorted(os.listdir(work / last)) == [
        "pytorch_lora_weights.safetensors"]
    assert (work / f"step{per_epoch}").is_dir()
    assert (work / "epoch_2.pth").is_file()
    weights = str(work / last / "pytorch_lora_weights.safetensors")
    with safe_open(weights, "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    prefixes = {k.split(".")[0] for k in shapes}
    ranks = {shape[0] for k, shape in shapes.items()
             if k.endswith("down.weight")}
    assert prefixes == parts and ranks == {8}

    model = trained_model(config, work, "epoch_2.pth", *model_options)
    kwargs = dict(num_inference_steps=3, output_type="np", height=64,
                  width=64, guidance_scale=7.5)
    trained = model.infer(["photo 0"], seed=3, **kwargs)[0]
    pipe = load_base_pipeline(tiny)
    pipe.set_progress_bar_config(disable=True)
    base = pipe("photo 0", generator=torch.Generator().manual_seed(3),
                **kwargs).images[0]
    pipe.load_lora_weights(str(work / last))
    loaded = pipe("photo 0", generator=torch.Generator().manual_seed(3),
                  **kwargs).images[0]
    assert abs(loaded - trained).max() <= 1e-5
    assert abs(loaded - base).max() > 1e-4


def fixed_noise_loss(model, dataset):
    """Mean denoising loss over the dataset at fixed noise and timesteps."""
    generator = torch.Generator().manual_seed(0)
    samples = [dataset[i]["inputs"] for i in range(len(dataset))]
    img = torch.stack([s["img"] for s in samples])
    noise = torch.randn(len(samples), 4, 32, 32, generator=generator)
    timesteps = torch.linspace(50, 950, len(samples)).long()
    with torch.no_grad():
        return model.denoising_loss(
            {"img": img, "text": [s["text"] for s in samples]}, noise,
            timesteps, torch.Generator().manual_seed(1)).item()


def test_readme_demo_trains_and_lowers_the_loss(tmp_path):
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_demo.py")],
                   cwd=tmp_path, check=True, capture_output=True)
    config = os.path.join(LORA_DIR, "tiny_sd_lora_demo.py")
    mim_train(config, tmp_path)
    work = tmp_path / "work_dirs" / "tiny_sd_lora_demo"
    assert (work / "step150").is_dir() and (work / "step300").is_dir()
    # a grid of both prompts per sampling interval, named by prompts and step
    samples = glob.glob(str(work / "*" / "vis_data" / "vis_image" / "*.png"))
    assert sorted(os.path.basename(p) for p in samples) == [
        f"a-red-circle-on-a-white-background+a-blue-square-on-a-black-"
        f"background_{step}.png" for step in (150, 300)]

    os.chdir(tmp_path)  # the config's data paths are relative to the cwd
    cfg = Config.fromfile(config)
    init_default_scope("diffengine")
    from diffengine.registry import DATASETS
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    before = fixed_noise_loss(MODELS.build(cfg.model), dataset)
    after = fixed_noise_loss(trained_model(config, work, "epoch_50.pth"),
                             dataset)
    print(f"fixed-noise loss: {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before

    # the README's tool commands on the demo's step folder, run as the docs
    # test runs the guides' (see docs/README.md)
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        block, = [b for b in FENCE.findall(f.read())
                  if b[0] == "bash" and "mim run diffengine" in b[1]]
    for command in block[1].strip().splitlines():
        run_command(rewrite(command, str(tmp_path)), str(tmp_path))
    assert (tmp_path / "demo.png").is_file()
    assert (tmp_path / "tiny_lora.safetensors").is_file()

