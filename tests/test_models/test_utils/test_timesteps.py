"""Timestep samplers: histograms over many draws match their distributions."""
import itertools
import math

import pytest
import torch

from diffengine.errors import ConfigError
from diffengine.models.utils.timesteps import (
    CubicSamplingTimeSteps,
    EarlierTimeSteps,
    LaterTimeSteps,
    LogitNormalTimeSteps,
    RangeTimeSteps,
    TimeSteps,
)
from diffengine.randomness import Randomness

T = 1000
DRAWS = 40_000
EDGES = list(range(0, T + 1, 100))  # ten bins of 100 timesteps


def histogram(sampler):
    # one generator drawing every sample in turn: many draws, quickly
    draws = sampler(Randomness([torch.Generator().manual_seed(0)] * DRAWS), T)
    assert draws.dtype == torch.int64
    assert draws.min() >= 0 and draws.max() < T
    return torch.histc(draws.double(), bins=10, min=0, max=T) / DRAWS


def bins_from_cdf(cdf):
    return [cdf(b) - cdf(a) for a, b in itertools.pairwise(EDGES)]


def weighted_bins(weight_of):
    total = sum(weight_of(t) for t in range(T))
    return [sum(weight_of(t) for t in range(a, b)) / total
            for a, b in itertools.pairwise(EDGES)]


def normal_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def logit(p):
    return math.log(p / (1 - p))


CASES = {
    "uniform": (TimeSteps(), [0.1] * 10),
    "later": (LaterTimeSteps(5, 0.25),
              weighted_bins(lambda t: 5.0 if t >= 750 else 1.0)),
    "earlier": (EarlierTimeSteps(3, 0.3),
                weighted_bins(lambda t: 3.0 if t < 300 else 1.0)),
    "range": (RangeTimeSteps(4, 0.2, 0.5),
              weighted_bins(lambda t: 4.0 if 200 <= t < 500 else 1.0)),
    # t = (1 − u³)·T: P(t < k) = 1 − (1 − k/T)^(1/3)
    "cubic": (CubicSamplingTimeSteps(),
              bins_from_cdf(lambda k: 1 - (1 - k / T)**(1 / 3))),
    # t = sigmoid(m + s·n)·T: P(t < k) = Φ((logit(k/T) − m)/s)
    "logit-normal": (LogitNormalTimeSteps(0.5, 1.5), bins_from_cdf(
        lambda k: 0.0 if k == 0 else 1.0 if k == T else normal_cdf(
            (logit(k / T) - 0.5) / 1.5))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_histogram_matches_the_distribution(name):
    sampler, expected = CASES[name]
    observed = histogram(sampler).tolist()
    # binomial standard error of a bin is at most 0.0025 with 40k draws
    assert observed == pytest.approx(expected, abs=0.01)


def test_a_sample_timestep_depends_on_its_seed_alone():
    sampler = LogitNormalTimeSteps()
    batch = sampler(Randomness.from_seeds([1, 2, 3], "model"), T)
    assert batch[1] == sampler(Randomness.from_seeds([2], "model"), T)[0]


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match=r"bias_portion=1\.5"):
        LaterTimeSteps(bias_portion=1.5)
    with pytest.raises(ConfigError, match=r"bias_begin=0\.6 must be below "
                       r"bias_end=0\.5"):
        RangeTimeSteps(bias_begin=0.6, bias_end=0.5)
    with pytest.raises(ConfigError, match="std=0"):
        LogitNormalTimeSteps(std=0)
