"""DreamBooth end to end: `mim train` draws the class images once, a later
run reuses them, and the step folder loads in diffusers (SD 1.x; SD3.5's
and FLUX.1 [schnell]'s class images drawn by their own pipelines, the
latter with [schnell]'s 4 steps and no guidance)."""
import json
import os

import numpy as np
import torch
from diffusers import (
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from diffengine.datasets.class_images import list_images, save_jpeg
from tests.conftest import REPO
from tests.test_datasets.test_dreambooth import instance_folder
from tests.test_tools.test_train import mim_train, trained_model

CONFIG = os.path.join(REPO, "configs", "stable_diffusion_dreambooth",
                      "stable_diffusion_v15_dreambooth_lora_dog.py")


def test_class_images_are_drawn_once_and_the_step_loads(tmp_path, tiny_sd,
                                                        shapes_data):
    work = tmp_path / "work"
    model_options = [f"model.model={tiny_sd}"]
    options = [
        *model_options, f"work_dir={work}",
        "train_dataloader.dataset.dataset="
        + instance_folder(tmp_path / "sks", shapes_data),
        "train_dataloader.dataset.num_class_images=4",
        "train_dataloader.dataset.class_generation.num_inference_steps=2",
        "train_dataloader.dataset.class_generation.guidance_scale=1.0",
        "train_dataloader.dataset.prior_loss_weight=0.5",
        "train_dataloader.dataset.pipeline.0.size=64",
        "train_dataloader.dataset.pipeline.1.size=64",
        "train_dataloader.batch_size=2", "train_dataloader.num_workers=0",
        "train_cfg.max_epochs=1", "custom_hooks=[]", "randomness.seed=0"]
    log = mim_train(CONFIG, tmp_path, *options)
    # keyed by the base, its weights, the size and the settings
    [folder] = (work / "class_images").glob("a_photo_of_a_dog-*")
    assert f"class images: generating 4 of 4 in {folder}" in log
    assert (folder / "class_images.json").is_file()
    assert ("DreamBooth: 3 instance images ('a photo of sks dog') and 4 "
            "class images ('a photo of a dog', loss weight 0.5); an epoch "
            "pairs each of 4 instance samples with a class sample: 8 "
            "samples") in log
    drawn = {p: os.path.getmtime(p) for p in list_images(str(folder))}
    assert len(drawn) == 4
    # 4 class images and 4 instance samples (3 images), batch 2
    assert (work / "step4").is_dir() and not (work / "step5").exists()

    again = mim_train(CONFIG, tmp_path, *options,
                      "train_cfg.max_epochs=2", "--resume")
    assert "generating" not in again
    assert f"class images: 4 found in {folder}, reused" in again
    assert {p: os.path.getmtime(p) for p in list_images(str(folder))} == drawn
    assert "resumed from" in again and (work / "step8").is_dir()

    model = trained_model(CONFIG, work, "epoch_2.pth", *model_options)
    kwargs = dict(num_inference_steps=3, output_type="np")
    trained = model.infer(["a photo of sks dog"], seed=3, **kwargs)[0]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd,
                                                   safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = pipe("a photo of sks dog",
                generator=torch.Generator().manual_seed(3), **kwargs).images[0]
    pipe.load_lora_weights(str(work / "step8"))
    loaded = pipe("a photo of sks dog",
                  generator=torch.Generator().manual_seed(3),
                  **kwargs).images[0]
    assert abs(loaded - trained).max() <= 1e-5
    assert abs(loaded - base).max() > 1e-4


SD3_DREAMBOOTH = """
_base_ = [
    {base}/models/stable_diffusion_3_5_lora.py",
    {base}/datasets/dog_dreambooth.py",
    {base}/schedules/stable_diffusion_3_50e.py",
    {base}/default_runtime.py",
]
"""


def test_sd3_class_images_are_drawn_by_the_sd3_pipeline_and_the_step_loads(
        tmp_path, tiny_sd3, shapes_data):
    config = tmp_path / "sd3_dreambooth.py"
    config.write_text(SD3_DREAMBOOTH.replace(
        "{base}", '"' + os.path.join(REPO, "configs", "_base_")))
    work = tmp_path / "work"
    model_options = [f"model.model={tiny_sd3}"]
    log = mim_train(
        str(config), tmp_path, *model_options, f"work_dir={work}",
        "train_dataloader.dataset.dataset="
        + instance_folder(tmp_path / "sks", shapes_data),
        "train_dataloader.dataset.num_class_images=2",
        "train_dataloader.dataset.class_generation.num_inference_steps=2",
        "train_dataloader.dataset.class_generation.guidance_scale=1.0",
        "train_dataloader.dataset.pipeline.0.size=32",
        "train_dataloader.dataset.pipeline.1.size=32",
        "train_dataloader.batch_size=2", "train_dataloader.num_workers=0",
        "train_cfg.max_epochs=1", "custom_hooks=[]", "randomness.seed=0",
        "optim_wrapper.optimizer.lr=1e-2")
    [folder] = (work / "class_images").glob("a_photo_of_a_dog-*")
    assert f"class images: generating 2 of 2 in {folder}" in log
    images = list_images(str(folder))
    assert len(images) == 2
    # at the base's own size (the transformer's sample size × 8), which
    # the SD3 pipeline draws in 16-px patches
    sizes = {Image.open(p).size for p in images}
    assert len(sizes) == 1 and all(side % 16 == 0 for side in sizes.pop())
    # each of the 3 instance images paired with a class image, batch 2
    assert "an epoch pairs each of 3 instance samples" in log
    assert (work / "step3").is_dir() and not (work / "step4").exists()

    model = trained_model(str(config), work, "epoch_1.pth", *model_options)
    kwargs = dict(num_inference_steps=2, guidance_scale=4.5, height=32,
                  width=32, output_type="np")
    trained = model.infer(["a photo of sks dog"], seed=3, **kwargs)[0]
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(work / "step3"))
    loaded = pipe("a photo of sks dog",
                  generator=torch.Generator().manual_seed(3),
                  **kwargs).images[0]
    assert abs(loaded - trained).max() <= 1e-5


FLUX_DREAMBOOTH = """
_base_ = [
    {base}/models/flux_dev_lora.py",
    {base}/datasets/dog_dreambooth.py",
    {base}/schedules/stable_diffusion_3_50e.py",
    {base}/default_runtime.py",
]
"""


def jpeg_round_trip(image: np.ndarray, path) -> np.ndarray:
    """``image`` as a class image file holds it."""
    save_jpeg(image, str(path))
    return np.asarray(Image.open(path), dtype=np.int16)


def test_flux_schnell_class_images_take_schnells_defaults_and_the_step_loads(
        tmp_path, tiny_flux_schnell, shapes_data):
    config = tmp_path / "flux_dreambooth.py"
    config.write_text(FLUX_DREAMBOOTH.replace(
        "{base}", '"' + os.path.join(REPO, "configs", "_base_")))
    work = tmp_path / "work"
    model_options = [f"model.model={tiny_flux_schnell}"]
    # steps and guidance left to the base: [schnell]'s 4 and 0.0
    log = mim_train(
        str(config), tmp_path, *model_options, f"work_dir={work}",
        "train_dataloader.dataset.dataset="
        + instance_folder(tmp_path / "sks", shapes_data),
        "train_dataloader.dataset.num_class_images=2",
        "train_dataloader.dataset.class_generation.height=32",
        "train_dataloader.dataset.class_generation.width=32",
        "train_dataloader.dataset.pipeline.0.size=32",
        "train_dataloader.dataset.pipeline.1.size=32",
        "train_dataloader.batch_size=2", "train_dataloader.num_workers=0",
        "train_cfg.max_epochs=1", "custom_hooks=[]", "randomness.seed=0",
        "optim_wrapper.optimizer.lr=1e-2")
    [folder] = (work / "class_images").glob("a_photo_of_a_dog-*")
    assert f"class images: generating 2 of 2 in {folder}" in log
    with open(folder / "class_images.json") as f:
        key = json.load(f)
    assert (key["num_inference_steps"], key["guidance_scale"]) == (4, 0.0)
    assert (key["height"], key["width"]) == (32, 32)
    # image k drawn by FluxPipeline with seed k at those settings (in one
    # batch, by the bfloat16 base the seed config trains), not at [dev]'s
    # 28 steps
    images = list_images(str(folder))
    assert len(images) == 2
    pipe = FluxPipeline.from_pretrained(tiny_flux_schnell,
                                        torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)

    def drawn(steps):
        return [jpeg_round_trip(np.asarray(image), tmp_path / f"{steps}.jpg")
                for image in pipe(
                    "a photo of a dog", num_inference_steps=steps,
                    guidance_scale=0.0, height=32, width=32,
                    max_sequence_length=256, num_images_per_prompt=2,
                    generator=[torch.Generator().manual_seed(k)
                               for k in range(2)]).images]

    stored = [np.asarray(Image.open(p), dtype=np.int16) for p in images]
    for mine, theirs in zip(stored, drawn(4), strict=True):
        assert np.array_equal(mine, theirs)
    for mine, theirs in zip(stored, drawn(28), strict=True):
        assert abs(mine - theirs).max() > 8
    assert "an epoch pairs each of 3 instance samples" in log
    assert (work / "step3").is_dir() and not (work / "step4").exists()

    model = trained_model(str(config), work, "epoch_1.pth", *model_options,
                          "model.weight_dtype=float32")
    kwargs = dict(num_inference_steps=2, height=32, width=32,
                  output_type="np")
    trained = model.infer(["a photo of sks dog"], seed=3, **kwargs)[0]
    # compared in fp32, the adapters alike in both
    pipe = FluxPipeline.from_pretrained(tiny_flux_schnell)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(work / "step3"))
    loaded = pipe("a photo of sks dog", guidance_scale=0.0,
                  max_sequence_length=model.max_sequence_length,
                  generator=torch.Generator().manual_seed(3),
                  **kwargs).images[0]
    assert abs(loaded - trained).max() <= 1e-5
