"""End to end: `mim train diffengine` as a user runs it, then diffusers."""
import glob
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from diffengine.demo import ShapeScorer
from diffengine.engine.checkpoint import load_checkpoint_file
from diffengine.export import export_lora
from diffengine.inference import (
    generate,
    label_height,
    load_base_pipeline,
    load_pipeline,
    panel_box,
    prompt_slug,
)
from diffengine.registry import MODELS
from diffengine.tools.plot_loss import plot_loss, read_scalar_log
from tests.conftest import REPO
from tests.oracles.comfyui_weights import rebuild_error
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


def mixed_data_run(work_dir, mixed_data):
    """--cfg-options of a seed config run on the mixed folder at 64 px,
    writing to ``work_dir``."""
    return [f"work_dir={work_dir}",
            f"train_dataloader.dataset.dataset={mixed_data}",
            "train_dataloader.dataset.caption_column=text",
            "train_dataloader.dataset.pipeline.0.size=64",
            "train_dataloader.dataset.pipeline.1.size=64",
            "train_dataloader.num_workers=0"]


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
        *mixed_data_run(tmp_path / "work", mixed_data),
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
             if k.endswith("lora_A.weight")}
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


# --cfg-options that switch the seed config's UNet LoRA to each kind, on
# attention and convolutions
KIND_OPTIONS = {
    "LoRA": [],
    "DoRA": ["model.unet_lora_config.use_dora=True"],
    "LoHa": ["model.unet_lora_config.type=LoHa"],
    "LoKr": ["model.unet_lora_config.type=LoKr"],
}
CONV_TARGETS = ("model.unet_lora_config.target_modules=[to_q,to_k,to_v,"
                "to_out.0,conv1,conv2,conv_shortcut,proj_in,proj_out,conv]")


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_every_kind_trains_reloads_and_exports(kind, tmp_path, tiny_sd,
                                               mixed_data):
    config = os.path.join(LORA_DIR, "stable_diffusion_v15_lora_pokemon_blip.py")
    model_options = [f"model.model={tiny_sd}",
                     "model.unet_lora_config.lora_alpha=4", CONV_TARGETS,
                     *KIND_OPTIONS[kind]]
    log = mim_train(
        config, tmp_path, *model_options,
        *mixed_data_run(tmp_path / "work", mixed_data),
        "train_cfg.max_epochs=1",
        # two steps at which every kind's weights move measurably (at 1e-4
        # DoRA's change is near float32's resolution of its magnitudes)
        "optim_wrapper.optimizer.lr=1e-2",
        "custom_hooks=[]")
    model = trained_model(config, tmp_path / "work", "epoch_1.pth",
                          *model_options)
    model.eval()
    count = model.trainable_parameter_counts()["unet"]
    assert f"{kind}: {count:,} trainable parameters (unet {count:,})" in log
    step = str(tmp_path / "work" / "step2")
    kwargs = dict(num_inference_steps=3, output_type="np")
    pipe = load_base_pipeline(tiny_sd)
    pipe.set_progress_bar_config(disable=True)
    base = generate(pipe, "photo 0", [3], **kwargs)[0]
    if kind in ("LoRA", "DoRA"):
        assert os.listdir(step) == ["pytorch_lora_weights.safetensors"]
        pipe.load_lora_weights(step)  # what diffusers users do
    else:
        assert os.listdir(step) == ["lycoris_weights.safetensors"]
        pipe = load_pipeline(tiny_sd, step)
    trained = model.infer(["photo 0"], seed=3, **kwargs)[0]
    assert abs(generate(pipe, "photo 0", [3], **kwargs)[0] - trained
               ).max() <= 1e-5
    assert abs(base - trained).max() > 1e-3

    out = str(tmp_path / f"{kind}.safetensors")
    export_lora(step, out)
    worst, convs = rebuild_error(model, load_file(out))
    assert worst <= 1e-5 and convs == 31


# How far the demo's LoRA lifts the concept score of its sample prompts above
# the base's (ShapeScorer, mean over 2 prompts × 4 seeds). Measured: 0.000 at
# step 0, 0.236 at step 300 (0.135 and 0.337); see the README.
CONCEPT_MARGIN = 0.15
DEMO_PROMPTS = ["a red zorb on a white background",
                "a blue zorb on a black background"]


def logged_scores(rows, step):
    """The mean of the demo's logged sample scores at ``step``."""
    row, = [r for r in rows if r["step"] == step]
    return [row[f"score/{prompt_slug([p])}"] for p in DEMO_PROMPTS]


def test_readme_demo_learns_the_held_out_concept(tmp_path):
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_demo.py")],
                   cwd=tmp_path, check=True, capture_output=True)
    config = os.path.join(LORA_DIR, "tiny_sd_lora_demo.py")
    mim_train(config, tmp_path)
    work = tmp_path / "work_dirs" / "tiny_sd_lora_demo"
    assert (work / "step150").is_dir() and (work / "step300").is_dir()
    # a grid of both prompts at step 0 (the base) and per sampling interval
    samples = glob.glob(str(work / "*" / "vis_data" / "vis_image" / "*.png"))
    assert sorted(os.path.basename(p) for p in samples) == sorted(
        f"{prompt_slug(DEMO_PROMPTS)}_{step}.png" for step in (0, 150, 300))

    rows = read_scalar_log(str(work))
    before, after = (np.mean(logged_scores(rows, s)) for s in (0, 300))
    validation = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    print(f"concept score {before:.3f} -> {after:.3f}; val/loss "
          + ", ".join(f"{step}: {loss:.4f}" for step, loss in validation))
    assert after - before >= CONCEPT_MARGIN
    assert [step for step, _ in validation] == list(range(30, 301, 30))
    assert validation[-1][1] < validation[0][1]

    # the step folder, loaded by diffusers, scores what the trained model
    # scored when it drew the samples
    pipe = load_base_pipeline(str(tmp_path / "data" / "demo" / "tiny-sd"))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(work / "step300"))
    scorer = ShapeScorer()
    # as the demo's VisualizationHook draws: 50 steps, guidance 3
    loaded = [np.mean([scorer(image, prompt) for image in generate(
        pipe, prompt, [0, 1, 2, 3], guidance_scale=3.0)])
        for prompt in DEMO_PROMPTS]
    assert loaded == pytest.approx(logged_scores(rows, 300), abs=1e-3)

    # the README's tool commands on the demo's step folder, run as the docs
    # test runs the guides' (see docs/README.md)
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        block, = [b for b in FENCE.findall(f.read())
                  if b[0] == "bash" and "mim run diffengine" in b[1]]
    for command in block[1].strip().splitlines():
        if command.startswith("mim run diffengine generate "):
            # as README writes it (the guides' tests cut its steps to 2), in
            # a process of its own as mim train's was: a process's thread
            # count changes the last bit of a float sum, so this suite's
            # process (threads set by earlier tests) may differ by a level
            subprocess.run([MIM, *shlex.split(command)[1:]], cwd=tmp_path,
                           check=True, capture_output=True, timeout=300)
        else:
            run_command(rewrite(command, str(tmp_path)), str(tmp_path))
    # demo with the step's own sample settings: the first row of the grid
    grid = np.asarray(Image.open(next(p for p in samples
                                      if p.endswith("_300.png"))))
    panels = [grid[y:y + 64, x:x + 64]
              for y, x in (panel_box(0, seed, 64, 64) for seed in range(4))]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "demo.png")),
                          np.hstack(panels))
    assert (tmp_path / "tiny_lora.safetensors").is_file()
    # the README's picture: step 0 beside step 300, each 2 × 4 images of
    # 64 px under their labels drawn twice as large, under a line for the
    # step
    band = label_height(64)
    assert Image.open(tmp_path / "before_after.png").size == (
        2 * 512 + 8, 2 * (band + 2 * (band + 64)) + 16)
    series = plot_loss(str(work), str(tmp_path / "loss.png"))
    assert list(series["val/loss/step"]) == list(range(30, 301, 30))
