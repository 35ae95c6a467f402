"""VisualizationHook on a real runner: its grid, which demo reproduces,
its argument checks, the step-0 samples and their scores, and SD3's
sampling defaults."""
import glob
import json
import os

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

import diffengine.engine  # noqa: F401  (registers the hooks)
from diffengine.demo import ShapeScorer
from diffengine.engine import DiffEngineRunner
from diffengine.engine.hooks import VisualizationHook
from diffengine.inference import (
    generate,
    label_height,
    load_pipeline,
    panel_box,
    prompt_slug,
)
from diffengine.tools.generate import main as demo
from tests.conftest import SD3_TARGETS, UNET_CONV_TARGETS, tiny_pipeline
from tests.test_engine.test_hooks.test_lora_checkpoint_hook import make_runner


def test_sd3_samples_that_demo_reproduces_with_28_steps_at_guidance_7(
        tmp_path, tiny_sd3, shapes_data):
    # no steps, no guidance: StableDiffusion3's 28 and 7.0
    hook = dict(type="VisualizationHook", prompt=["a red circle"], seed=[1],
                by_epoch=False, interval=2, height=32, width=32)
    runner = DiffEngineRunner.from_cfg(Config(dict(
        model=dict(type="StableDiffusion3", model=tiny_sd3,
                   transformer_lora_config=dict(r=2,
                                                target_modules=SD3_TARGETS)),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            batch_size=2, num_workers=0,
            sampler=dict(type="DeterministicSampler", shuffle=False),
            dataset=dict(type="HFDataset", dataset=shapes_data,
                         pipeline=tiny_pipeline())),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type="LoRACheckpointHook",
                                           by_epoch=False, interval=2)),
        custom_hooks=[hook], randomness=dict(seed=0),
        default_scope="diffengine")))
    runner.train()
    [png] = glob.glob(str(tmp_path / "**" / "vis_image" / "*.png"),
                      recursive=True)
    y, x = panel_box(0, 0, 32, 32)
    sample = np.asarray(Image.open(png))[y:y + 32, x:x + 32]
    step = str(tmp_path / "step2")
    told = generate(load_pipeline(tiny_sd3, step), "a red circle", [1],
                    height=32, width=32, num_inference_steps=28,
                    guidance_scale=7.0)[0]
    assert np.array_equal(sample, told)
    # demo, given nothing, samples as the step's training did
    out = tmp_path / "demo.png"
    demo(["a red circle", step, "--out", str(out)])
    assert np.array_equal(np.asarray(Image.open(out)), sample)


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
