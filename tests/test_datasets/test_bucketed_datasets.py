"""Datasets with aspect-ratio buckets: each row's bucket, kohya repeats,
bad rows replaced within their bucket, cached latents at bucket sizes."""
import os
import shutil

import pytest
import torch

from diffengine.datasets import HFDataset, KohyaFolderDataset
from diffengine.datasets import image as image_module
from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion
from tests.conftest import ORIENTATIONS, UNET_TARGETS, framed_image
from tests.test_datasets.test_samplers import BUCKET_PIPELINE


def write_kohya_orientations(path):
    """Portraits in ``3_portrait`` (3 repeats), landscapes at the top."""
    os.makedirs(os.path.join(path, "3_portrait"))
    for i, (width, height) in enumerate(ORIENTATIONS[:6]):
        folder = path if width > height else os.path.join(path, "3_portrait")
        framed_image(width, height, 50 + 20 * i).save(
            os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w") as f:
            f.write(f"picture {i}\n")
    return path


def test_kohya_repeats_count_in_their_bucket(tmp_path, monkeypatch):
    dataset = KohyaFolderDataset(write_kohya_orientations(str(tmp_path)),
                                 pipeline=BUCKET_PIPELINE)
    opened = []
    real_check = image_module.check_image
    monkeypatch.setattr("diffengine.datasets.preflight.check_image",
                        lambda source: opened.append(source) or real_check(
                            source))
    buckets = dataset.row_buckets()
    assert len(buckets) == 3 + 3 * 3
    assert buckets.count((80, 24)) == 9 and buckets.count((24, 80)) == 3
    assert len(opened) == 6  # each file decoded once by the pre-flight scan
    assert dataset.row_buckets() is buckets
    for index in range(len(dataset)):
        assert dataset[index]["inputs"]["img"].shape[1:] == buckets[index]


def test_bad_rows_are_skipped_within_their_bucket(tmp_path, orientation_data):
    folder = tmp_path / "data"
    shutil.copytree(orientation_data, folder)
    # unreadable from the start: skipped when the buckets are read
    (folder / "00_30x90.png").write_bytes(b"not a png")
    dataset = HFDataset(str(folder), pipeline=BUCKET_PIPELINE,
                        max_bad_fraction=0.3)
    buckets = dataset.row_buckets()
    assert buckets[0] is None and dataset.bad_rows == {0}
    # broken after the scan: the next row of its bucket takes its place
    (folder / "03_90x30.png").write_bytes(b"not a png")
    sample = dataset[3]["inputs"]
    assert sample["text"] == "a framed picture 4"
    assert sample["img"].shape[1:] == buckets[3] == (24, 80)
    assert dataset.bad_rows == {0, 3}


def test_pack_inputs_must_keep_the_loss_weight(orientation_data):
    pipeline = [*BUCKET_PIPELINE[:-1],
                dict(type="PackInputs", optional_keys=["seed"])]
    dataset = HFDataset(orientation_data, pipeline=pipeline)
    with pytest.raises(ConfigError, match="PackInputs drops; keep "
                       "'loss_weight' in its optional_keys"):
        dataset[(0, 1, 0.5)]


def test_cached_latents_have_the_bucket_size(tmp_path, orientation_data,
                                             tiny_sd):
    model = StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS))
    batches = []

    def encode(images):
        batches.append(tuple(images.shape))
        return model.encode_images(images)

    pipeline = [BUCKET_PIPELINE[0], dict(type="RandomHorizontalFlip", p=0.5),
                *BUCKET_PIPELINE[1:]]
    dataset = HFDataset(orientation_data, pipeline=pipeline,
                        cache_latents=True)
    dataset.build_latent_cache(encode, model.latent_encoder_id(),
                               str(tmp_path / "cache"), batch_size=2)
    # each batch holds images of one bucket, two views each
    assert all(shape[0] in (2, 4) for shape in batches)
    assert sum(shape[0] for shape in batches) == 2 * len(ORIENTATIONS)
    uncached = HFDataset(orientation_data, pipeline=pipeline)
    for index, bucket in enumerate(uncached.row_buckets()):
        key = (index, 11 + index, 1.0)
        cached, plain = dataset[key]["inputs"], uncached[key]["inputs"]
        # VAE latents are 2× smaller on the tiny model
        assert cached["latents"].shape == (8, bucket[0] // 2, bucket[1] // 2)
        torch.testing.assert_close(
            cached["latents"], model.encode_images(plain["img"][None])[0])
        assert cached["loss_weight"] == plain["loss_weight"] == 1.0
