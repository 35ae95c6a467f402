import pytest
from PIL import Image

from diffengine.errors import ConfigError, DataError
from diffengine.randomness import Randomness
from diffengine.registry import TRANSFORMS


def build(cfg):
    return TRANSFORMS.build(cfg)


def test_resize_shortest_edge_keeps_aspect():
    results = build(dict(type="ResizeShortestEdge", size=32))(
        {"img": Image.new("RGB", (100, 50))})
    assert results["img"].size == (64, 32)
    assert results["ori_img_shape"] == (50, 100)
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        build(dict(type="ResizeShortestEdge", size=8, interpolation="cubic"))


@pytest.mark.parametrize("cfg,message", [
    (dict(type="CenterCrop", size=60), "CenterCrop size=60: 60 is not a "
     "positive multiple of 8 (the VAE downsamples by 8); use 56 or 64."),
    (dict(type="RandomCrop", size=(64, 68)), "RandomCrop size=(64, 68): 68 "
     "is not a positive multiple of 8 (the VAE downsamples by 8); use 64 or "
     "72."),
    (dict(type="ResizeShortestEdge", size=4), "ResizeShortestEdge size=4: 4 "
     "is not a positive multiple of 8 (the VAE downsamples by 8); use 8."),
    (dict(type="BucketResizeCrop", bucket_reso_steps=12), "BucketResizeCrop "
     "bucket_reso_steps=12: 12 is not a positive multiple of 8 (the VAE "
     "downsamples by 8); use 8 or 16."),
    (dict(type="BucketResizeCrop", sizes=[(64, 64), (60, 68)]),
     "BucketResizeCrop sizes=(60, 68): 60 is not a positive multiple of 8 "
     "(the VAE downsamples by 8); use 56 or 64."),
])
def test_sizes_the_vae_cannot_take_are_refused(cfg, message):
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert str(err.value) == message


def test_extreme_aspect_ratios_are_refused_not_resized():
    resize = build(dict(type="ResizeShortestEdge", size=512))
    assert resize.output_size(4096, 512) == (4096, 512)
    with pytest.raises(DataError) as err:
        resize({"img": Image.new("RGB", (20000, 20))})
    assert str(err.value) == (
        "20000×20 has an aspect ratio of 1000.0:1, beyond the 8:1 that "
        "ResizeShortestEdge takes; crop it.")


def test_center_crop_records_its_box():
    image = Image.new("RGB", (64, 32))
    image.putpixel((32, 16), (255, 0, 0))
    results = build(dict(type="CenterCrop", size=16))({"img": image})
    assert results["crop_bbox"] == (24, 8, 40, 24)
    assert results["img"].getpixel((8, 8)) == (255, 0, 0)


def crop_box(crop, seed, size=(40, 20)):
    return crop({"img": Image.new("RGB", size),
                 "randomness": Randomness.from_seeds([seed], "data")}
                )["crop_bbox"]


def test_random_crop_stays_inside_and_records_its_box():
    crop = build(dict(type="RandomCrop", size=(8, 16)))
    boxes = {crop_box(crop, seed) for seed in range(300)}
    for x1, y1, x2, y2 in boxes:
        assert (x2 - x1, y2 - y1) == (16, 8)
        assert x1 >= 0 and x2 <= 40 and y1 >= 0 and y2 <= 20
    # every offset, the last one included, is reached
    assert {box[0] for box in boxes} == set(range(25))
    assert {box[1] for box in boxes} == set(range(13))
    # the sample's seed decides the place
    assert crop_box(crop, 7) == crop_box(crop, 7)
    with pytest.raises(DataError) as err:
        crop_box(crop, 0, size=(10, 10))
    assert str(err.value) == (
        "10×10 is smaller than the 16×8 RandomCrop; resize it first "
        "(ResizeShortestEdge with size >= the crop).")
    with pytest.raises(KeyError, match=r"results\['randomness'\] is missing"):
        crop({"img": Image.new("RGB", (40, 20))})


def test_flip_mirrors_and_records():
    image = Image.new("RGB", (4, 1))
    image.putpixel((0, 0), (255, 0, 0))
    always = build(dict(type="RandomHorizontalFlip", p=1.0))({"img": image})
    assert always["flip"] and always["img"].getpixel((3, 0)) == (255, 0, 0)
    never = build(dict(type="RandomHorizontalFlip", p=0.0))({"img": image})
    assert not never["flip"] and never["img"].getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ValueError, match="p=2"):
        build(dict(type="RandomHorizontalFlip", p=2))
