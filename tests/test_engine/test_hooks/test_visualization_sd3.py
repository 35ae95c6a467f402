"""VisualizationHook and demo on SD3: the family's sampling defaults."""
import glob

import numpy as np
from mmengine.config import Config
from PIL import Image

import diffengine.engine  # noqa: F401  (registers the hooks)
from diffengine.engine import DiffEngineRunner
from diffengine.inference import generate, load_pipeline, panel_box
from diffengine.tools.generate import main as demo
from tests.conftest import SD3_TARGETS, tiny_pipeline


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
