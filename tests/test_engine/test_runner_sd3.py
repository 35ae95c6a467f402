"""Stable Diffusion 3.5 end to end: `mim train` of the Medium seed configs on
the tiny SD3.5-shaped model and an image folder no other test reads, every
step folder loaded by diffusers' SD3 pipeline, and bad input."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from PIL import Image

from tests.conftest import REPO
from tests.test_tools.test_train import MIM, mim_train, trained_model

SD3_DIR = os.path.join(REPO, "configs", "stable_diffusion_3_lora")
MEDIUM = os.path.join(SD3_DIR, "stable_diffusion_3_5_medium_lora_pokemon_blip.py")
MEDIUM_TEXT = os.path.join(
    SD3_DIR, "stable_diffusion_3_5_medium_lora_textencoder_pokemon_blip.py")
# 4 images, batch 2, 32 px crops (latents of 4 × 4: 2 × 2 patches): 2
# iterations, a checkpoint and a step folder after each.


def write_stripes_folder(path) -> str:
    """An imagefolder of 4 striped images in 4 sizes, captions in ``text``."""
    os.makedirs(path, exist_ok=True)
    sizes = [(40, 48), (48, 40), (36, 36), (64, 40)]
    colours = ["teal", "amber", "violet", "olive"]
    rng = np.random.default_rng(21)
    with open(os.path.join(path, "metadata.jsonl"), "w") as f:
        for i, ((width, height), colour) in enumerate(
                zip(sizes, colours, strict=True)):
            array = rng.integers(0, 64, (height, width, 3), dtype=np.uint8)
            array[:, ::4] = rng.integers(128, 256, 3, dtype=np.uint8)
            name = f"stripes_{i}.png"
            Image.fromarray(array).save(os.path.join(path, name))
            f.write(json.dumps({"file_name": name,
                                "text": f"{colour} stripes"}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory) -> str:
    return write_stripes_folder(tmp_path_factory.mktemp("data") / "stripes")


def shrink(tiny, data, work_dir, *extra):
    """--cfg-options that train a seed config on ``data`` at 32 px, one
    epoch, a checkpoint every iteration, at a rate that moves the weights."""
    return [f"model.model={tiny}",
            f"train_dataloader.dataset.dataset={data}",
            "train_dataloader.dataset.caption_column=text",
            "train_dataloader.dataset.pipeline.0.size=32",
            "train_dataloader.dataset.pipeline.1.size=32",
            "train_dataloader.batch_size=2", "train_dataloader.num_workers=0",
            "train_cfg.max_epochs=1", "custom_hooks=[]",
            "default_hooks.checkpoint.by_epoch=False",
            "default_hooks.checkpoint.interval=1",
            "optim_wrapper.optimizer.lr=1e-2", "randomness.seed=0",
            f"work_dir={work_dir}", *extra]


@pytest.mark.parametrize("config, parts", [
    (MEDIUM, {"transformer"}),
    (MEDIUM_TEXT, {"transformer", "text_encoder", "text_encoder_2"}),
], ids=["transformer", "transformer-and-clips"])
def test_medium_seed_config_trains_and_every_step_loads_in_diffusers(
        config, parts, tmp_path, tiny_sd3, stripes):
    work = tmp_path / "work"
    options = shrink(tiny_sd3, stripes, work)
    log = mim_train(config, tmp_path, *options)
    assert "CUDA is not available: training in fp32" in log
    assert sorted(p.name for p in work.glob("step*")) == ["step1", "step2"]
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, guidance_scale=4.5, height=32,
                  width=32, output_type="np")
    prompt = "teal stripes"

    def draw():
        return pipe(prompt, generator=torch.Generator().manual_seed(3),
                    **kwargs).images[0]

    base = draw()
    for step in (1, 2):
        model = trained_model(config, work, f"iter_{step}.pth", *options)
        assert set(model.adapter_configs) == parts
        trained = model.infer([prompt], seed=3, **kwargs)[0]
        pipe.unload_lora_weights()
        pipe.load_lora_weights(str(work / f"step{step}"))
        loaded = draw()
        assert abs(loaded - trained).max() <= 1e-5, step
        assert abs(loaded - base).max() > 1e-4, step


def without_t5(tiny_sd3, path) -> str:
    """A copy of ``tiny_sd3`` (links) without T5 and its tokenizer."""
    os.makedirs(path)
    for name in os.listdir(tiny_sd3):
        if name not in ("text_encoder_3", "tokenizer_3"):
            os.symlink(os.path.join(tiny_sd3, name), os.path.join(path, name))
    return str(path)


def mim_error(config, cwd, *options) -> tuple[int, str]:
    """Exit status and last stderr line of a `mim train` that fails."""
    result = subprocess.run([MIM, "train", "diffengine", config,
                             "--cfg-options", *options], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert [x for x in lines if x.startswith("diffengine")] == lines[-1:]
    return result.returncode, lines[-1]


def test_a_folder_without_t5_names_the_folder_and_the_switch(
        tmp_path, tiny_sd3, stripes):
    folder = without_t5(tiny_sd3, tmp_path / "no-t5")
    options = shrink(tiny_sd3, stripes, tmp_path / "work")
    options[0] = f"model.model={folder}"
    code, line = mim_error(MEDIUM, tmp_path, *options)
    assert code == 1
    assert line == (
        f"diffengine: error: model={folder!r} lacks T5 (the subfolders "
        "['text_encoder_3', 'tokenizer_3']): point model.model at a folder "
        "with T5, or leave T5 out with --cfg-options model.use_t5=False.")
    # the switch it names trains on that folder
    mim_train(MEDIUM, tmp_path, *options, "model.use_t5=False",
              f"work_dir={tmp_path / 'clip-only'}")
    assert (tmp_path / "clip-only" / "step2").is_dir()


def test_unet_lora_config_names_transformer_lora_config(tmp_path, tiny_sd3,
                                                        stripes):
    code, line = mim_error(MEDIUM, tmp_path,
                           *shrink(tiny_sd3, stripes, tmp_path / "work"),
                           # an SD 1.x adapter config, whole
                           "model.unet_lora_config.r=4",
                           "model.unet_lora_config.target_modules="
                           "[to_q,to_k,to_v,to_out.0]")
    assert code == 1
    assert line == (
        "diffengine: error: unet_lora_config is set, but StableDiffusion3's "
        "denoiser is its transformer: rename it to transformer_lora_config.")
    assert not (tmp_path / "work").exists() or not list(
        (tmp_path / "work").glob("*.pth"))

