"""LoRACheckpointHook and VisualizationHook on a real runner."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from safetensors.torch import load_file

import diffengine.engine  # noqa: F401  (registers the hooks)
from diffengine.adapter_file import read_adapter_file, weights_path
from diffengine.demo import ShapeScorer
from diffengine.engine import DiffEngineRunner
from diffengine.engine.checkpoint import load_checkpoint_file
from diffengine.engine.hooks import VisualizationHook
from diffengine.inference import label_height, panel_box, prompt_slug
from diffengine.tools.generate import main as demo
from tests.conftest import UNET_CONV_TARGETS, tiny_train_config


def make_runner(work_dir, tiny_sd, shapes_data, custom_hooks=(), model=None,
                **checkpoint):
    # from a Config, as `mim train` builds it: the runner reads runner.cfg
    return DiffEngineRunner.from_cfg(Config(tiny_train_config(
        work_dir, tiny_sd, shapes_data, model=model,
        train_cfg=dict(by_epoch=False, max_iters=6),
        default_hooks=dict(checkpoint=dict(
            type="LoRACheckpointHook", by_epoch=False, **checkpoint)),
        custom_hooks=list(custom_hooks),
        randomness=dict(seed=0),
        experiment_name=os.path.basename(str(work_dir)),
    )))


def test_lora_checkpoint_hook_writes_and_rotates_step_dirs(
        tmp_path, tiny_sd, shapes_data):
    runner = make_runner(tmp_path, tiny_sd, shapes_data, interval=2,
                         max_keep_ckpts=2)
    runner.train()
    assert sorted(glob.glob(str(tmp_path / "step*"))) == [
        str(tmp_path / "step4"), str(tmp_path / "step6")]
    assert sorted(os.path.basename(p) for p in glob.glob(
        str(tmp_path / "*.pth"))) == ["iter_4.pth", "iter_6.pth"]
    # the step dir holds the model's current adapters
    saved = load_file(str(tmp_path / "step6" / "pytorch_lora_weights.safetensors"))
    current = runner.model.lora_state_dicts()["unet"]
    assert set(saved) == {f"unet.{k}" for k in current}
    for key, value in current.items():
        torch.testing.assert_close(saved[f"unet.{key}"], value)
    # the step file tells how it was trained, for export_lora
    training = read_adapter_file(str(tmp_path / "step6")).training
    assert {k: training[k] for k in ("step", "epoch", "max_steps",
                                     "num_train_images", "resolution",
                                     "dataset", "base_model")} == {
        "step": "6", "epoch": "0", "max_steps": "6", "num_train_images": "24",
        "resolution": "32x32", "dataset": shapes_data, "base_model": tiny_sd}
    assert json.loads(training["training_config"])["train_cfg"] == {
        "by_epoch": False, "max_iters": 6}
    # the .pth holds the adapters, not the frozen base
    checkpoint = load_checkpoint_file(str(tmp_path / "iter_6.pth"))
    assert checkpoint["state_dict"] and all(
        "lora_" in k for k in checkpoint["state_dict"])
    assert "optimizer" in checkpoint


# LoRA samples and reloads through diffusers, LoKr through the LyCORIS file
@pytest.mark.parametrize("model", [None, dict(unet_lora_config=dict(
    type="LoKr", r=2, alpha=3, target_modules=UNET_CONV_TARGETS))])
def test_visualization_hook_writes_a_grid_that_demo_reproduces(
        tmp_path, tiny_sd, shapes_data, model):
    prompts = ["a red circle", "a square"]
    hook = dict(type="VisualizationHook", prompt=prompts, seed=[1, 2],
                by_epoch=False, interval=3, height=32, width=32,
                num_inference_steps=2, guidance_scale=3.0)
    runner = make_runner(tmp_path, tiny_sd, shapes_data, custom_hooks=[hook],
                         model=model, interval=3)
    runner.train()
    pngs = sorted(glob.glob(str(tmp_path / "**" / "vis_image" / "*.png"),
                            recursive=True))
    assert [os.path.basename(p) for p in pngs] == [
        "a-red-circle+a-square_3.png", "a-red-circle+a-square_6.png"]
    grid = np.asarray(Image.open(pngs[1]))
    # a row per prompt under its label, a column per seed under its label
    band = label_height(32)
    assert grid.shape == (band + 2 * (band + 32), 64, 3)
    assert (grid[:band] < 128).any() and (grid[band + 32:2 * band + 32]
                                          < 128).any()

    # demo on step6, with no settings given, draws the same pixels: it
    # samples as the step's training did (2 steps, guidance 3, 32 px,
    # seeds 1 and 2)
    for row, prompt in enumerate(prompts):
        out = tmp_path / f"demo{row}.png"
        demo([prompt, str(tmp_path / "step6"), "--out", str(out)])
        panels = [grid[y:y + 32, x:x + 32] for y, x in (
            panel_box(row, column, 32, 32) for column in range(2))]
        assert np.array_equal(np.asarray(Image.open(out)), np.hstack(panels))


def test_visualization_hook_checks_its_arguments():
    with pytest.raises(ValueError, match="non-empty list of prompts"):
        VisualizationHook(prompt="a cat")
    with pytest.raises(ValueError, match="interval=0"):
        VisualizationHook(prompt=["a cat"], interval=0)
    with pytest.raises(ValueError, match=r"seed=\[\]"):
        VisualizationHook(prompt=["a cat"], seed=[])


@pytest.mark.parametrize("model", [None, dict(unet_lora_config=dict(
    type="LoHa", r=2, alpha=3, target_modules=UNET_CONV_TARGETS))])
def test_iteration_based_resume_is_bit_exact(tmp_path, tiny_sd, shapes_data,
                                             model):
    """12 iterations straight, or 8 then a resume from iteration 8."""
    def run(work_dir, max_iters, **kwargs):
        runner = make_runner(work_dir, tiny_sd, shapes_data, model=model,
                             interval=4, max_keep_ckpts=-1)
        runner._train_loop = dict(by_epoch=False, max_iters=max_iters)
        for key, value in kwargs.items():
            setattr(runner, key, value)
        runner.train()
        return runner

    run(tmp_path / "straight", 12)
    run(tmp_path / "first", 8)
    resumed = run(tmp_path / "first", 12, _resume=True)
    # 24 images, batch 2: iteration 12 starts the second pass over the data
    assert resumed.iter == 12
    straight = load_file(weights_path(str(tmp_path / "straight" / "step12")))
    again = load_file(weights_path(str(tmp_path / "first" / "step12")))
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_visualization_hook_samples_step_0_and_logs_sample_scores(
        tmp_path, tiny_sd, shapes_data):
    prompts = ["a red zorb on a white background",
               "a blue circle on a black background"]
    hook = dict(type="VisualizationHook", prompt=prompts, seed=[1, 2],
                by_epoch=False, interval=3, height=32, width=32,
                num_inference_steps=2, at_start=True,
                scorer=dict(type="ShapeScorer"))
    runner = make_runner(tmp_path, tiny_sd, shapes_data, custom_hooks=[hook],
                         interval=3)
    runner.train()
    pngs = {int(os.path.basename(p).rsplit("_", 1)[1][:-len(".png")]): p
            for p in glob.glob(str(tmp_path / "**" / "vis_image" / "*.png"),
                               recursive=True)}
    assert sorted(pngs) == [0, 3, 6]
    log, = glob.glob(str(tmp_path / "*" / "vis_data" / "scalars.json"))
    with open(log) as f:
        rows = [json.loads(line) for line in f]
    scores = {r["step"]: r for r in rows if any(k.startswith("score/")
                                                for k in r)}
    assert sorted(scores) == [0, 3, 6]
    scorer = ShapeScorer()
    for step, path in pngs.items():
        grid = np.asarray(Image.open(path))
        for row, prompt in enumerate(prompts):
            images = [grid[y:y + 32, x:x + 32] for y, x in (
                panel_box(row, col, 32, 32) for col in range(2))]
            assert scores[step][f"score/{prompt_slug([prompt])}"] == (
                pytest.approx(np.mean([scorer(im, prompt) for im in images])))


def test_a_run_on_cached_latents_records_the_resolution_of_one_on_images(
        tmp_path, tiny_sd, shapes_data):
    """The resolution comes from the pipeline, not from the batches, which
    hold latents and no image when they are cached."""
    resolutions = []
    for cache in (False, True):
        work_dir = tmp_path / f"cache_{cache}"
        DiffEngineRunner.from_cfg(Config(tiny_train_config(
            work_dir, tiny_sd, shapes_data,
            dataset=dict(cache_latents=cache),
            train_cfg=dict(by_epoch=False, max_iters=1),
            default_hooks=dict(checkpoint=dict(
                type="LoRACheckpointHook", by_epoch=False, interval=1)),
            experiment_name=f"resolution_cache_{cache}",
        ))).train()
        training = read_adapter_file(str(work_dir / "step1")).training
        resolutions.append(training.get("resolution"))
    assert resolutions == ["32x32", "32x32"]
