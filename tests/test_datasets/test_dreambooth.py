"""DreamBoothDataset and its class images: rows, weights, generation once."""
import os
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from diffengine.datasets import DreamBoothDataset
from diffengine.datasets import class_images as class_images_module
from diffengine.datasets.class_images import (
    class_image_folder,
    generate_class_images,
    list_images,
)
from diffengine.engine import DiffEngineRunner
from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion
from tests.conftest import UNET_TARGETS, tiny_pipeline, tiny_train_config

INSTANCE = "a photo of sks shape"
CLASS = "a photo of a shape"
# few steps, no classifier-free guidance: the tiny model draws fast
GENERATION = dict(num_inference_steps=2, guidance_scale=1.0, batch_size=3)


def instance_folder(path, shapes_data, count=3):
    """A plain folder of ``count`` images, as users keep their subject."""
    os.makedirs(path)
    for i in range(count):
        shutil.copy(os.path.join(shapes_data, f"{i:04d}.png"), path)
    return str(path)


def class_folder(path, count):
    os.makedirs(path)
    for i in range(count):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(
            os.path.join(path, f"dog{i}.png"))
    return str(path)


def test_rows_pair_every_class_image_with_an_instance_sample(tmp_path,
                                                             shapes_data):
    dataset = DreamBoothDataset(
        instance_folder(tmp_path / "sks", shapes_data), INSTANCE,
        class_prompt=CLASS, class_data_dir=class_folder(tmp_path / "dogs", 5),
        num_class_images=4, prior_loss_weight=0.5, pipeline=tiny_pipeline())
    assert not dataset.needs_class_images
    assert len(dataset) == 8  # 4 class images, 4 instance samples (3 images)
    samples = [dataset[i]["inputs"] for i in range(8)]
    assert [s["text"] for s in samples] == [INSTANCE] * 4 + [CLASS] * 4
    assert [s["loss_weight"] for s in samples] == [1.0] * 4 + [0.5] * 4
    assert torch.equal(samples[0]["img"], samples[3]["img"])  # cycled
    assert [os.path.basename(dataset.image_source(i)) for i in range(4, 8)
            ] == ["dog0.png", "dog1.png", "dog2.png", "dog3.png"]
    # each row has its own seed: the same image, other draws
    assert dataset[(0, 1)]["inputs"]["seed"] != dataset[(3, 2)]["inputs"][
        "seed"]


def test_without_class_prompt_only_the_instances_train(tmp_path, shapes_data):
    dataset = DreamBoothDataset(instance_folder(tmp_path / "sks", shapes_data),
                                INSTANCE, pipeline=tiny_pipeline())
    assert len(dataset) == 3 and not dataset.needs_class_images
    assert "loss_weight" not in dataset[0]["inputs"]
    dataset.prepare_class_images(None, str(tmp_path))  # nothing to do
    assert not (tmp_path / "class_images").exists()


@pytest.mark.parametrize(("options", "message"), [
    (dict(instance_prompt=""), "instance_prompt='' must be a non-empty"),
    (dict(class_prompt=CLASS, num_class_images=0), "num_class_images=0"),
    (dict(class_generation=dict(steps=2)), r"class_generation options "
     r"\['steps'\] are unknown"),
])
def test_bad_options_are_named(tmp_path, shapes_data, options, message):
    options = dict(dict(instance_prompt=INSTANCE), **options)
    with pytest.raises(ConfigError, match=message):
        DreamBoothDataset(instance_folder(tmp_path / "sks", shapes_data),
                          **options)


def test_class_images_are_generated_once_with_their_seeds(tmp_path, tiny_sd):
    model = StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS))
    calls = []

    def generate(seeds):
        calls.append(list(seeds))
        return model.infer([CLASS], seed=list(seeds), num_inference_steps=2,
                           guidance_scale=1.0)

    folder = class_image_folder(str(tmp_path), CLASS)
    assert folder == str(tmp_path / "class_images" / "a_photo_of_a_shape")
    assert generate_class_images(folder, 3, generate, batch_size=2) == 3
    assert calls == [[0, 1], [2]]
    names = [os.path.basename(p) for p in list_images(folder)]
    assert names == [f"class_{k:05d}.jpg" for k in range(3)]
    # image k is the base model's image of seed k (JPEG at quality 95)
    written = np.asarray(Image.open(list_images(folder)[1]), dtype=float)
    own, other = (np.abs(written - generate([seed])[0]).mean()
                  for seed in (1, 2))
    assert own < other / 2
    # a second run finds them; a killed one left some: only the rest is drawn
    calls.clear()
    assert generate_class_images(folder, 3, generate) == 0
    os.remove(os.path.join(folder, "class_00001.jpg"))
    open(os.path.join(folder, ".class_00001.jpg.tmp123"), "w").close()
    assert generate_class_images(folder, 4, generate, batch_size=4) == 2
    assert calls == [[1, 3]]
    assert len(list_images(folder)) == 4


def test_each_process_draws_its_share(tmp_path, monkeypatch):
    monkeypatch.setattr(class_images_module, "get_dist_info", lambda: (1, 2))
    drawn = []

    def generate(seeds):
        drawn.extend(seeds)
        return [np.zeros((8, 8, 3), np.uint8) for _ in seeds]

    folder = str(tmp_path / "dogs")
    class_folder(folder, 1)  # one image there already
    # rank 1 of 2 draws every other missing image; rank 0 (not run here)
    # would draw the others, so the folder stays short
    with pytest.raises(Exception, match="holds 3 images, fewer than "
                       "num_class_images=5"):
        generate_class_images(folder, 5, generate, batch_size=8)
    assert drawn == [1, 3]


def test_the_runner_draws_the_class_images_and_trains_on_both(
        tmp_path, tiny_sd, shapes_data):
    dataset = dict(type="DreamBoothDataset",
                   dataset=instance_folder(tmp_path / "sks", shapes_data),
                   instance_prompt=INSTANCE, class_prompt=CLASS,
                   num_class_images=3, prior_loss_weight=0.25,
                   class_generation=GENERATION, pipeline=tiny_pipeline())
    cfg = tiny_train_config(tmp_path / "work", tiny_sd, shapes_data,
                            dataset=dataset,
                            model=dict(loss=dict(type="SNRL2Loss")),
                            train_cfg=dict(by_epoch=True, max_epochs=1))
    cfg["train_dataloader"]["batch_size"] = 6
    runner = DiffEngineRunner.from_cfg(Config(cfg))
    loop = runner.build_train_loop(runner.cfg.train_cfg)
    folder = tmp_path / "work" / "class_images" / "a_photo_of_a_shape"
    assert len(list_images(str(folder))) == 3
    batch = runner.model.data_preprocessor(next(iter(loop.dataloader)))
    inputs = batch["inputs"]
    assert inputs["text"] == [INSTANCE] * 3 + [CLASS] * 3
    assert inputs["loss_weight"] == [1.0] * 3 + [0.25] * 3
    # the loss: instance losses plus 0.25 × class losses, each through the
    # loss component (min-SNR here), over the batch
    model = runner.model
    loss = model.denoising_loss(inputs)
    prediction, target, context = model.predict(
        inputs, model.randomness(inputs))
    per_sample = model.loss_fn.per_sample(prediction, target, context)
    expected = (per_sample[:3].sum() + 0.25 * per_sample[3:].sum()) / 6
    torch.testing.assert_close(loss, expected)
