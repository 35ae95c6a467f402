import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffengine.inference import generate, load_pipeline
from diffengine.tools.generate import main
from tests.conftest import SAMPLE


def test_demo_writes_a_grid_of_seeds(lora_step, tiny_sd, tmp_path, capsys):
    out = tmp_path / "demo.png"
    # no --base: the step file names the model it was trained on
    main([SAMPLE["prompt"], lora_step.step_dir, "--out", str(out), "--steps",
          "3", "--seed", "7", "8"])
    grid = np.asarray(Image.open(out))
    assert grid.shape == (64, 128, 3)
    images = generate(load_pipeline(tiny_sd, lora_step.step_dir),
                      SAMPLE["prompt"], [7, 8], num_inference_steps=3)
    assert np.array_equal(grid, np.hstack(images))
    # the reference of the trained model, as uint8
    reference = (lora_step.reference * 255).round()
    assert np.abs(grid[:, :64].astype(float) - reference).max() <= 1
    assert "2 image(s) of 64×64" in capsys.readouterr().out


def test_demo_lora_scale_zero_is_the_base(lora_step, tiny_sd, tmp_path):
    out = tmp_path / "base.png"
    main([SAMPLE["prompt"], lora_step.step_dir, "--base", tiny_sd, "--out",
          str(out), "--steps", "2", "--scale", "0", "--negative", "blurry"])
    base = generate(load_pipeline(tiny_sd), SAMPLE["prompt"], [0],
                    negative_prompt="blurry", num_inference_steps=2)[0]
    assert np.array_equal(np.asarray(Image.open(out)), base)


def test_demo_needs_a_base_for_files_without_one(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(path))
    with pytest.raises(ValueError, match="pass --base"):
        main(["a cat", str(path)])


def test_demo_samples_as_the_steps_training_did_unless_told(lora_step,
                                                            tiny_sd, tmp_path):
    hook = dict(type="VisualizationHook", prompt=["x"], seed=[4, 5],
                num_inference_steps=2, guidance_scale=3.0, height=32,
                width=32, negative_prompt="blurry")
    step_dir = str(tmp_path / "step6")
    lora_step.model.save_lora_weights(step_dir, {"training_config": json.dumps(
        dict(custom_hooks=[dict(type="EMAHook"), hook]))})
    out = tmp_path / "demo.png"
    main([SAMPLE["prompt"], step_dir, "--out", str(out)])
    pipe = load_pipeline(tiny_sd, step_dir)
    trained = generate(pipe, SAMPLE["prompt"], [4, 5], negative_prompt="blurry",
                       height=32, width=32, num_inference_steps=2,
                       guidance_scale=3.0)
    assert np.array_equal(np.asarray(Image.open(out)), np.hstack(trained))
    # a flag overrides the step's setting, the others stay
    main([SAMPLE["prompt"], step_dir, "--out", str(out), "--guidance-scale",
          "7.5", "--seed", "4"])
    told = generate(pipe, SAMPLE["prompt"], [4], negative_prompt="blurry",
                    height=32, width=32, num_inference_steps=2)
    assert np.array_equal(np.asarray(Image.open(out)), told[0])
    assert not np.array_equal(told[0], trained[0])


def test_demo_on_an_sd3_step_takes_the_familys_defaults(tiny_sd3, tmp_path,
                                                         capsys):
    from tests.conftest import save_perturbed_sd3_step
    step_dir = str(tmp_path / "step3")  # no training config recorded
    save_perturbed_sd3_step(tiny_sd3, step_dir)
    out = tmp_path / "demo.png"
    main(["a red circle", step_dir, "--out", str(out), "--height", "32",
          "--width", "32"])
    assert "28 steps, guidance 7.0" in capsys.readouterr().out
    images = generate(load_pipeline(tiny_sd3, step_dir), "a red circle", [0],
                      height=32, width=32, num_inference_steps=28,
                      guidance_scale=7.0)
    assert np.array_equal(np.asarray(Image.open(out)), images[0])
    # a flag still wins
    main(["a red circle", step_dir, "--out", str(out), "--height", "32",
          "--width", "32", "--steps", "2"])
    assert "2 steps, guidance 7.0" in capsys.readouterr().out


@pytest.mark.parametrize("variant, steps, guidance", [
    ("tiny_flux", 28, 3.5), ("tiny_flux_schnell", 4, 0.0)])
def test_demo_on_a_flux_step_takes_the_variants_defaults(
        variant, steps, guidance, tmp_path, capsys, request):
    """FLUX.1 [dev] at 28 steps and its distilled guidance 3.5, [schnell] at
    4 steps without guidance: one pass each, no negative prompt."""
    from diffusers import FluxPipeline

    from tests.conftest import save_perturbed_flux_step
    tiny = request.getfixturevalue(variant)
    step_dir = str(tmp_path / "step3")  # no training config recorded
    save_perturbed_flux_step(FluxPipeline.from_pretrained(tiny), step_dir,
                             dict(r=4, target_modules=["to_q", "to_k"]))
    out = tmp_path / "demo.png"
    main(["a red circle", step_dir, "--base", tiny, "--out", str(out),
          "--height", "32", "--width", "32"])
    assert f"{steps} steps, guidance {guidance}" in capsys.readouterr().out
    images = generate(load_pipeline(tiny, step_dir), "a red circle", [0],
                      height=32, width=32, num_inference_steps=steps,
                      guidance_scale=guidance)
    assert np.array_equal(np.asarray(Image.open(out)), images[0])
