"""DreamBoothDataset and its class images: rows, weights, generation once."""
import json
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
    class_images_key,
    generate_class_images,
    list_images,
    sampled_weights_digest,
)
from diffengine.engine import DiffEngineRunner
from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion
from diffengine.testing import make_tiny_sd
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


def test_an_epoch_pairs_each_instance_sample_with_a_class_sample(
        tmp_path, shapes_data):
    # more instance images than class images: the class images cycle
    dataset = DreamBoothDataset(
        instance_folder(tmp_path / "sks", shapes_data), INSTANCE,
        class_prompt=CLASS, class_data_dir=class_folder(tmp_path / "dogs", 2),
        num_class_images=2, pipeline=tiny_pipeline())
    assert dataset.rows == [(False, 0), (False, 1), (False, 2),
                            (True, 0), (True, 1), (True, 0)]
    assert dataset.epoch_summary() == (
        "DreamBooth: 3 instance images ('a photo of sks shape') and 2 class "
        "images ('a photo of a shape', loss weight 1.0); an epoch pairs each "
        "of 3 instance samples with a class sample: 6 samples")


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

    folder = str(tmp_path / "shapes")
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


def sd_model(path: str, **options) -> StableDiffusion:
    return StableDiffusion(path, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS), **options)


def test_class_images_are_keyed_by_what_draws_them(tmp_path, tiny_sd):
    options = dict(num_inference_steps=2, guidance_scale=1.0)
    model = sd_model(tiny_sd)
    key = class_images_key(model.pipeline(), model.base_model, CLASS, options)
    assert {k: v for k, v in key.items()
            if k not in ("weights", "scheduler")} == dict(
        base_model=tiny_sd, dtype="float32", prompt=CLASS, height=64,
        width=64, num_inference_steps=2, guidance_scale=1.0,
        negative_prompt=None, seeds="image k is drawn with seed k")
    assert key["scheduler"]["class"] == "PNDMScheduler"
    folder = class_image_folder(str(tmp_path), key)
    assert os.path.dirname(folder) == str(tmp_path / "class_images")
    assert os.path.basename(folder).startswith("a_photo_of_a_shape-")

    def folder_of(model, prompt=CLASS, **changes):
        return class_image_folder(str(tmp_path), class_images_key(
            model.pipeline(), model.base_model, prompt,
            dict(options, **changes)))

    # the same base with another (random) LoRA init draws the same images
    torch.manual_seed(123)
    assert folder_of(sd_model(tiny_sd)) == folder
    other_base = make_tiny_sd(str(tmp_path / "other-sd"), seed=1)
    others = [folder_of(model, prompt="a photo of a dog"),
              folder_of(model, height=32, width=32),
              folder_of(model, num_inference_steps=3),
              folder_of(model, guidance_scale=7.5),
              folder_of(model, negative_prompt="blurry"),
              folder_of(sd_model(other_base)),
              folder_of(sd_model(tiny_sd, weight_dtype="bfloat16"))]
    assert len({folder, *others}) == 8


def test_the_fingerprint_samples_every_tensor_to_its_last_value():
    # more values than float32 counts exactly: the last one is sampled
    size = 2**24 + 3
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.zeros(size, dtype=torch.uint8),
                                      requires_grad=False)
    layer.adapter = torch.nn.Parameter(torch.zeros(4))  # trainable: left out
    digest = sampled_weights_digest([layer])
    with torch.no_grad():
        layer.adapter += 1
        assert sampled_weights_digest([layer]) == digest
        layer.weight[size // 2 + 1] = 1  # between two samples: unseen
        assert sampled_weights_digest([layer]) == digest
        layer.weight[-1] = 1
        assert sampled_weights_digest([layer]) != digest


def test_a_run_draws_into_its_keyed_folder_and_a_given_one_is_kept(
        tmp_path, tiny_sd, shapes_data):
    model = sd_model(tiny_sd)
    options = dict(instance_prompt=INSTANCE, class_prompt=CLASS,
                   num_class_images=2, class_generation=GENERATION,
                   pipeline=tiny_pipeline())
    sks = instance_folder(tmp_path / "sks", shapes_data)
    dataset = DreamBoothDataset(sks, **options)
    dataset.prepare_class_images(model, str(tmp_path / "work"))
    folder = dataset.class_data_dir
    assert os.path.dirname(folder) == str(tmp_path / "work" / "class_images")
    with open(os.path.join(folder, "class_images.json")) as f:
        manifest = json.load(f)
    assert manifest == json.loads(json.dumps(class_images_key(
        model.pipeline(), model.base_model, CLASS,
        dict(num_inference_steps=2, guidance_scale=1.0))))
    assert [os.path.basename(p) for p in dataset.class_images] == [
        "class_00000.jpg", "class_00001.jpg"]
    # the user's own folder: used as is, nothing drawn, no manifest
    own = class_folder(tmp_path / "own", 2)
    dataset = DreamBoothDataset(sks, class_data_dir=own, **options)
    dataset.prepare_class_images(model, str(tmp_path / "work"))
    assert sorted(os.listdir(own)) == ["dog0.png", "dog1.png"]
    assert [os.path.basename(p) for p in dataset.class_images] == [
        "dog0.png", "dog1.png"]


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
    folder = loop.dataloader.dataset.class_data_dir
    assert os.path.basename(folder).startswith("a_photo_of_a_shape-")
    assert len(list_images(folder)) == 3
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
