"""BucketResizeCrop: kohya's buckets, the nearest one, cover and crop."""
import pytest
import torch
from PIL import Image

from diffengine.datasets.latent_cache import LatentCachePlan
from diffengine.datasets.transforms import (
    BucketResizeCrop,
    ComputeTimeIds,
    ImageToNormalizedTensor,
    PackInputs,
    RandomHorizontalFlip,
    kohya_bucket_sizes,
)
from diffengine.errors import ConfigError, DataError
from diffengine.randomness import Randomness
from tests.conftest import FRAME, framed_image


def run(transforms, image, seed=0):
    results = {"img": image,
               "randomness": Randomness.from_seeds([seed], "data")}
    for transform in transforms:
        results = transform(results)
    return results


def test_kohya_buckets_of_sd15_and_sdxl():
    # 512² px: each width 256..1024 with the tallest height (a multiple of
    # 64, at most 1024) of area <= 512², both ways round
    widths_heights = [(w, h) for h, w in kohya_bucket_sizes(512)]
    assert widths_heights == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704),
        (320, 768), (384, 640), (448, 576), (512, 512), (576, 448),
        (640, 384), (704, 320), (768, 320), (832, 256), (896, 256),
        (960, 256), (1024, 256)]
    sdxl = {(w, h) for h, w in kohya_bucket_sizes(1024, 512, 2048)}
    assert {(1024, 1024), (896, 1152), (832, 1216), (768, 1344),
            (640, 1536), (1216, 832)} <= sdxl
    assert all(w * h <= 1024**2 and w % 64 == h % 64 == 0 for w, h in sdxl)


@pytest.mark.parametrize(("size", "bucket", "resized"), [
    ((300, 900), (256, 832), (277, 832)),
    ((900, 300), (832, 256), (832, 277)),
    ((640, 480), (576, 448), (597, 448)),
    ((512, 512), (512, 512), (512, 512)),
    ((4000, 3000), (576, 448), (597, 448)),
])
def test_each_image_covers_the_bucket_nearest_its_aspect(size, bucket,
                                                         resized):
    transform = BucketResizeCrop(512)
    width, height = size
    assert transform.bucket_of(width, height)[::-1] == bucket
    results = run([transform], Image.new("RGB", size))
    assert results["img"].size == bucket
    assert results["crop_source_shape"] == resized[::-1]
    assert results["ori_img_shape"] == (height, width)
    # a centre crop of the covering resize
    left = (resized[0] - bucket[0]) // 2
    top = (resized[1] - bucket[1]) // 2
    assert results["crop_bbox"] == (left, top, left + bucket[0],
                                    top + bucket[1])


def test_portraits_and_landscapes_are_treated_alike():
    transform = BucketResizeCrop(512)
    for width in range(64, 2000, 37):
        for height in (100, 517, 1500):
            if max(width, height) > 8 * min(width, height):
                continue  # beyond the aspect limit, tested below
            assert transform.bucket_of(width, height) == transform.bucket_of(
                height, width)[::-1]


def test_the_subject_keeps_its_frame():
    # a 1:3 portrait: a square crop would cut its top and bottom
    results = run([BucketResizeCrop(48, 16, 96, 8)], framed_image(30, 90, 90))
    image = torch.tensor(list(results["img"].getdata())).view(80, 24, 3)
    red = (image == torch.tensor(FRAME)).all(-1)
    assert results["img"].size == (24, 80)
    for edge in (red[0], red[-1], red[:, 0], red[:, -1]):
        assert edge.float().mean() > 0.9


def test_small_images_are_not_enlarged_unless_asked():
    transform = BucketResizeCrop(512)
    # a 100×70 image would be enlarged to 576×448: its own bucket instead
    assert transform.bucket_of(100, 70) == (64, 64)
    results = run([transform], Image.new("RGB", (100, 70)))
    assert results["img"].size == (64, 64)
    # shrunk to cover it, never enlarged
    assert results["crop_source_shape"] == (64, 91)
    assert BucketResizeCrop(512, bucket_reso_steps=32).bucket_of(
        100, 70) == (64, 96)
    assert BucketResizeCrop(512, upscale=True).bucket_of(100, 70) == (448, 576)
    # too narrow for its nearest bucket (1024×256) and larger than any:
    # shrunk to the largest bucket's area (512²) first
    assert transform.bucket_of(250, 2000) == (1408, 128)
    assert transform.bucket_of(2000, 250) == (128, 1408)
    assert transform.bucket_of(64, 512) == (512, 64)  # never below a step
    results = run([transform], Image.new("RGB", (250, 2000)))
    assert results["img"].size == (128, 1408)
    with pytest.raises(DataError) as err:
        transform.bucket_of(40, 30)
    assert str(err.value) == (
        "40×30: its height 30 is below bucket_reso_steps=64; enlarge it, "
        "drop it, or set BucketResizeCrop upscale=True.")
    with pytest.raises(DataError) as err:
        transform.bucket_of(60, 400)
    assert str(err.value) == (
        "60×400: its width 60 is below bucket_reso_steps=64; enlarge it, "
        "drop it, or set BucketResizeCrop upscale=True.")


def test_extreme_aspect_ratios_are_refused():
    for transform in (BucketResizeCrop(512), BucketResizeCrop(512,
                                                              upscale=True)):
        with pytest.raises(DataError) as err:
            transform.bucket_of(20000, 20)
        assert str(err.value) == (
            "20000×20 has an aspect ratio of 1000.0:1, beyond the 8:1 that "
            "BucketResizeCrop takes; crop it.")
    assert BucketResizeCrop(512, upscale=True).bucket_of(800, 100) == (
        256, 1024)


def test_given_sizes_are_the_buckets():
    transform = BucketResizeCrop(sizes=[(64, 64), (32, 96), (96, 32)])
    assert transform.buckets == [(64, 64), (32, 96), (96, 32)]
    assert transform.bucket_of(300, 100) == (32, 96)
    assert transform.bucket_of(100, 310) == (96, 32)
    assert run([transform], Image.new("RGB", (300, 100)))["img"].size == (96,
                                                                          32)


def test_random_crop_draws_from_the_sample_seed():
    transform = BucketResizeCrop(sizes=[(32, 32)], random_crop=True)
    image = Image.new("RGB", (64, 40))  # resized to 51×32: 20 offsets
    boxes = {run([transform], image, seed)["crop_bbox"] for seed in range(200)}
    assert {box[0] for box in boxes} == set(range(20))
    assert {box[1] for box in boxes} == {0}
    assert run([transform], image, 3)["crop_bbox"] == run(
        [transform], image, 3)["crop_bbox"]
    # a latent cache crops at the centre
    fixed = transform.for_latent_cache()
    assert not fixed.random_crop and fixed.buckets == transform.buckets
    assert BucketResizeCrop(512).for_latent_cache().random_crop is False


def test_time_ids_record_the_original_size_and_the_crop():
    transforms = [BucketResizeCrop(512), ComputeTimeIds()]
    results = run(transforms, Image.new("RGB", (300, 900)))
    # resized to 277×832, cropped to 256×832 from x = 10
    assert results["time_ids"].tolist() == [900, 300, 0, 10, 832, 256]
    flipped = run([BucketResizeCrop(512), RandomHorizontalFlip(1.0),
                   ComputeTimeIds()], Image.new("RGB", (300, 900)))
    assert flipped["time_ids"].tolist() == [900, 300, 0, 11, 832, 256]


def test_latent_cache_views_are_at_the_bucket_size():
    plan = LatentCachePlan([BucketResizeCrop(48, 16, 96, 8, random_crop=True),
                            RandomHorizontalFlip(0.5), ComputeTimeIds(),
                            ImageToNormalizedTensor(), PackInputs()])
    views = plan.views_of(framed_image(90, 30, 80))
    assert views["img"].shape == (2, 3, 24, 80)
    assert torch.equal(views["img"][1], views["img"][0].flip(-1))
    assert views["time_ids"][:, :2].tolist() == [[30, 90], [30, 90]]
    assert plan.settings[0][0] == "BucketResizeCrop"
    assert plan.settings[0][1]["random_crop"] is False


@pytest.mark.parametrize(("options", "message"), [
    (dict(bucket_reso_steps=0), "bucket_reso_steps=0 must be > 0"),
    (dict(min_bucket_reso=100), "min_bucket_reso=100 must be a positive "
     "multiple of bucket_reso_steps=64"),
    (dict(min_bucket_reso=1024, max_bucket_reso=512), "min_bucket_reso=1024 "
     "is larger than max_bucket_reso=512"),
    (dict(sizes=[(64, )]), r"sizes=\[\(64,\)\]: give a list of \(height, "
     r"width\) pairs"),
    (dict(interpolation="cubic"), "interpolation='cubic'"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        BucketResizeCrop(**options)
