import pytest
from PIL import Image

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
    with pytest.raises(ValueError, match=r"smaller than the crop"):
        crop_box(crop, 0, size=(10, 10))
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
