"""Noise generators: distributions, structure, per-sample draws."""
import pytest
import torch

from diffengine.errors import ConfigError
from diffengine.models.utils.noise import OffsetNoise, PyramidNoise, WhiteNoise
from diffengine.randomness import Randomness

LATENTS = torch.zeros(6, 4, 32, 32)


def randomness(seeds=range(6)):
    return Randomness.from_seeds(list(seeds), "model")


@pytest.mark.parametrize("noise", [WhiteNoise(), OffsetNoise(0.1),
                                   PyramidNoise(), PyramidNoise(0.5, False)],
                         ids=["white", "offset", "pyramid", "pyramid-fixed"])
def test_a_sample_noise_depends_on_its_seed_alone(noise):
    batch = noise(LATENTS, randomness([3, 4, 5, 6, 7, 8]))
    assert batch.shape == LATENTS.shape
    alone = noise(LATENTS[:1], randomness([5]))
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=1e-6)


def test_offset_noise_shifts_each_channel():
    many = torch.zeros(2000, 4, 8, 8)
    white = WhiteNoise()(many, randomness(range(2000)))
    offset = OffsetNoise(0.5)(many, randomness(range(2000)))
    # the offset is a constant per sample and channel: the channel means
    # vary by 0.5² more than white noise's
    var_white = white.mean(dim=(2, 3)).var().item()
    var_offset = offset.mean(dim=(2, 3)).var().item()
    assert var_offset - var_white == pytest.approx(0.25, rel=0.1)
    # the within-channel spread is that of white noise
    assert (offset - offset.mean(dim=(2, 3), keepdim=True)).std().item() == (
        pytest.approx(1.0, rel=0.02))
    with pytest.raises(ConfigError, match="offset_weight=-1"):
        OffsetNoise(-1)


def test_pyramid_noise_has_unit_variance_and_coarse_layers():
    many = torch.zeros(200, 4, 32, 32)
    pyramid = PyramidNoise(discount=0.9)(many, randomness(range(200)))
    white = WhiteNoise()(many, randomness(range(200)))
    # each sample renormalised: unit standard deviation, sample by sample
    torch.testing.assert_close(pyramid.flatten(1).std(1),
                               torch.ones(200), rtol=1e-5, atol=0)
    # the layers are low-frequency: neighbouring values are correlated, and
    # much of the variance survives averaging over 8×8 blocks
    def neighbour_correlation(x):
        a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    assert abs(neighbour_correlation(white)) < 0.02
    assert neighbour_correlation(pyramid) > 0.5
    blocks = torch.nn.functional.avg_pool2d(pyramid, 8).var().item()
    white_blocks = torch.nn.functional.avg_pool2d(white, 8).var().item()
    assert white_blocks == pytest.approx(1 / 64, rel=0.1)
    assert blocks > 10 * white_blocks
    with pytest.raises(ConfigError, match=r"discount=1\.5"):
        PyramidNoise(discount=1.5)
