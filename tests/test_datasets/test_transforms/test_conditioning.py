"""ComputeTimeIds: SDXL's size and crop conditioning after any crop/flip."""
import torch
from PIL import Image

from diffengine.datasets.latent_cache import LatentCachePlan
from diffengine.datasets.transforms import (
    CenterCrop,
    ComputeTimeIds,
    ImageToNormalizedTensor,
    PackInputs,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShortestEdge,
)
from diffengine.randomness import Randomness


def run(transforms, image, seed=0):
    results = {"img": image, "randomness": Randomness.from_seeds([seed],
                                                                 "data")}
    for transform in transforms:
        results = transform(results)
    return results


def test_original_size_crop_and_target():
    image = Image.new("RGB", (300, 150))  # w × h
    results = run([ResizeShortestEdge(64), CenterCrop(64), ComputeTimeIds()],
                  image)
    # resized to 128 × 64, the centre crop starts at x = 32
    assert results["time_ids"].tolist() == [150, 300, 0, 32, 64, 64]
    assert results["time_ids"].dtype == torch.float32
    # no resize, no crop: the image as it is
    assert run([ComputeTimeIds()], image)["time_ids"].tolist() == [
        150, 300, 0, 0, 150, 300]


def test_the_crop_is_where_the_flipped_image_shows_it():
    image = Image.new("RGB", (100, 60))
    for seed in range(20):
        crop = run([RandomCrop((40, 32))], image, seed)
        x1, y1, x2, y2 = crop["crop_bbox"]
        flipped = run([RandomCrop((40, 32)), RandomHorizontalFlip(1.0),
                       ComputeTimeIds()], image, seed)
        # the flipped crop is the crop of the flipped image, mirrored
        assert flipped["crop_bbox"] == (100 - x2, y1, 100 - x1, y2)
        assert flipped["time_ids"].tolist() == [60, 100, y1, 100 - x2, 40, 32]
        # flipping first and cropping after needs no mirroring
        first = run([RandomHorizontalFlip(1.0), RandomCrop((40, 32)),
                     ComputeTimeIds()], image, seed)
        assert first["time_ids"].tolist() == [60, 100, y1, x1, 40, 32]


def test_each_cached_view_keeps_its_time_ids():
    plan = LatentCachePlan([ResizeShortestEdge(32), RandomCrop(32),
                            RandomHorizontalFlip(0.5), ComputeTimeIds(),
                            ImageToNormalizedTensor(), PackInputs()])
    views = plan.views_of(Image.new("RGB", (96, 48)))
    assert views["img"].shape == (2, 3, 32, 32)
    # resized to 64 × 32, centre crop at x = 16; mirrored: 64 - 48 = 16
    assert views["time_ids"].tolist() == [[48, 96, 0, 16, 32, 32]] * 2
    off_centre = LatentCachePlan([ResizeShortestEdge(32), CenterCrop((32, 24)),
                                  RandomHorizontalFlip(0.5), ComputeTimeIds(),
                                  ImageToNormalizedTensor(), PackInputs()])
    # resized to 61 × 32: the crop at x 18..42, mirrored at 61 - 42 = 19
    views = off_centre.views_of(Image.new("RGB", (91, 48)))
    assert [v[3] for v in views["time_ids"].tolist()] == [18, 19]
