"""The latent cache: how a pipeline is split, keys, views, flip picks."""
import pytest
import torch
from mmcv.transforms import BaseTransform
from PIL import Image

from diffengine.datasets.latent_cache import (
    LatentCache,
    LatentCachePlan,
    PickLatentView,
)
from diffengine.datasets.transforms import (
    CenterCrop,
    ImageToNormalizedTensor,
    PackInputs,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    ShuffleCaptionTags,
)
from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion3
from diffengine.randomness import Randomness
from tests.conftest import SD3_TARGETS


def pipeline(crop=RandomCrop, flip=0.5):
    transforms = [ResizeShortestEdge(16), crop(16)]
    if flip is not None:
        transforms.append(RandomHorizontalFlip(flip))
    return [*transforms, ImageToNormalizedTensor(), PackInputs()]


def test_plan_caches_the_centre_crop_and_its_mirror():
    plan = LatentCachePlan(pipeline())
    assert [name for name, *_ in plan.settings] == [
        "ResizeShortestEdge", "CenterCrop", "RandomHorizontalFlip",
        "ImageToNormalizedTensor"]
    assert plan.settings[1][1] == {"size": (16, 16)}
    image = Image.effect_mandelbrot((24, 20), (-2, -1.5, 1, 1.5), 50).convert(
        "RGB")
    views = plan.views_of(image)["img"]
    assert views.shape == (2, 3, 16, 16)
    assert torch.equal(views[1], views[0].flip(-1))
    # the centre of the 19×16 resized image: columns 1..17
    centre = CenterCrop(16).transform(
        ResizeShortestEdge(16).transform({"img": image}))
    assert torch.equal(
        views[0], ImageToNormalizedTensor().transform(centre)["img"])
    pick, pack = plan.pipeline.transforms
    assert pick.p == 0.5 and pack.keys == ("latents", "text")


def test_without_flip_one_view_is_cached():
    plan = LatentCachePlan(pipeline(crop=CenterCrop, flip=None))
    assert len(plan.views) == 1
    assert plan.pipeline.transforms[0].p is None
    assert len(LatentCachePlan(pipeline(flip=0.0)).views) == 1


class Blur(BaseTransform):
    def transform(self, results):
        return results


def test_transforms_that_cannot_be_cached_are_named():
    with pytest.raises(ConfigError, match="pipeline's Blur cannot be cached"):
        LatentCachePlan([ResizeShortestEdge(16), Blur(),
                         ImageToNormalizedTensor(), PackInputs()])
    with pytest.raises(ConfigError, match="needs ImageToNormalizedTensor"):
        LatentCachePlan([ResizeShortestEdge(16), PackInputs()])


def test_the_pick_draws_the_flip_as_the_uncached_flip_does():
    latents = torch.stack([torch.zeros(8, 2, 2), torch.ones(8, 2, 2)])
    flips = set()
    for seed in range(20):
        uncached = RandomHorizontalFlip(0.5).transform(
            {"img": Image.new("RGB", (2, 2)),
             "randomness": Randomness.from_seeds([seed], "data")})["flip"]
        cached = PickLatentView(0.5).transform(
            {"latents": latents,
             "randomness": Randomness.from_seeds([seed], "data")})
        assert cached["flip"] == uncached
        assert cached["latents"].mean().item() == float(uncached)
        flips.add(uncached)
    assert flips == {True, False}


def test_caption_transforms_run_on_cached_samples_in_pipeline_order():
    transforms = pipeline()
    transforms.insert(0, ShuffleCaptionTags(keep_tokens=0))
    plan = LatentCachePlan(transforms)
    assert [type(t).__name__ for t in plan.pipeline.transforms] == [
        "ShuffleCaptionTags", "PickLatentView", "PackInputs"]
    # they do not touch the latents, so they are not part of the keys
    assert [name for name, *_ in plan.settings] == [
        "ResizeShortestEdge", "CenterCrop", "RandomHorizontalFlip",
        "ImageToNormalizedTensor"]


def test_keys_depend_on_image_settings_and_encoder(tmp_path):
    cache = LatentCache(str(tmp_path), dict(transforms=[1], encoder="a"))
    key = cache.key("digest")
    assert key == LatentCache(str(tmp_path), dict(
        encoder="a", transforms=[1])).key("digest")
    assert len({key, cache.key("other"),
                LatentCache(str(tmp_path), dict(transforms=[2], encoder="a")
                            ).key("digest"),
                LatentCache(str(tmp_path), dict(transforms=[1], encoder="b")
                            ).key("digest")}) == 4
    assert not cache.has(key)
    cache.save(key, {"latents": torch.arange(8.0).view(1, 8, 1, 1),
                     "time_ids": torch.ones(1, 6)})
    assert cache.has(key) and cache.path(key).startswith(
        str(tmp_path / key[:2]))
    loaded = cache.load(key)
    assert torch.equal(loaded["latents"], torch.arange(8.0).view(1, 8, 1, 1))
    assert torch.equal(loaded["time_ids"], torch.ones(1, 6))


def test_the_encoder_id_of_a_vae_without_quant_conv(tiny_sd3):
    """SD3's VAE has no quant_conv: the id digests its encoder alone, the
    same for the same weights, another once a weight changes."""
    def build():
        return StableDiffusion3(tiny_sd3, transformer_lora_config=dict(
            r=2, target_modules=SD3_TARGETS))

    model = build()
    assert model.vae.quant_conv is None
    encoder_id = model.latent_encoder_id()
    assert encoder_id == build().latent_encoder_id()
    with torch.no_grad():
        model.vae.encoder.conv_in.weight[0, 0, 0, 0] += 1e-3
    assert model.latent_encoder_id() != encoder_id
