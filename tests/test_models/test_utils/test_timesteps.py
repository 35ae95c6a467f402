"""Timestep samplers: histograms over many draws match their distributions,
as DDPM indices and as noise levels; the indices are those of the samplers
before they drew levels."""
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
    ModeTimeSteps,
    RangeTimeSteps,
    ShiftedTimeSteps,
    TimeSteps,
    UniformTimeSteps,
)
from diffengine.randomness import Randomness
from diffengine.registry import MODELS

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


# ---- noise levels in [0, 1] -------------------------------------------


def draw_levels(sampler, draws=DRAWS):
    levels = sampler.levels(Randomness([torch.Generator().manual_seed(0)]
                                       * draws))
    assert levels.dtype == torch.float32
    assert levels.min() >= 0 and levels.max() <= 1
    return levels


def level_histogram(sampler):
    return (torch.histc(draw_levels(sampler).double(), bins=10, min=0, max=1)
            / DRAWS)


def density_bins(density_of):
    # mass of each tenth of [0, 1] under a density given on a fine grid
    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    mass = density_of(grid)
    mass = mass / mass.sum()
    return mass.view(10, -1).sum(1).tolist()


def mode_cdf(level, scale=1.29):
    # invert f(u) = 1 − u − s·(cos²(πu/2) − 1 + u), decreasing in u, by
    # bisection: P(f(u) < level) = 1 − f⁻¹(level)
    low, high = 0.0, 1.0
    for _ in range(60):
        u = (low + high) / 2
        f = 1 - u - scale * (math.cos(math.pi * u / 2)**2 - 1 + u)
        low, high = (u, high) if f > level else (low, u)
    return 1 - low


LEVEL_CASES = {
    "uniform": (UniformTimeSteps(), [0.1] * 10),
    "later": (LaterTimeSteps(5, 0.25), density_bins(
        lambda x: torch.where(x >= 0.75, 5.0, 1.0))),
    "earlier": (EarlierTimeSteps(3, 0.3), density_bins(
        lambda x: torch.where(x < 0.3, 3.0, 1.0))),
    "range": (RangeTimeSteps(4, 0.2, 0.5), density_bins(
        lambda x: torch.where((x >= 0.2) & (x < 0.5), 4.0, 1.0))),
    "cubic": (CubicSamplingTimeSteps(),
              bins_from_cdf(lambda k: 1 - (1 - k / T)**(1 / 3))),
    "logit-normal": (LogitNormalTimeSteps(0.5, 1.5), bins_from_cdf(
        lambda k: 0.0 if k == 0 else 1.0 if k == T else normal_cdf(
            (logit(k / T) - 0.5) / 1.5))),
    "mode": (ModeTimeSteps(), bins_from_cdf(lambda k: mode_cdf(k / T))),
    # σ' = 3σ/(1 + 2σ) ⇔ σ = σ'/(3 − 2σ'): P(σ' < x) = x/(3 − 2x)
    "shifted": (ShiftedTimeSteps(shift=3.0),
                bins_from_cdf(lambda k: (k / T) / (3 - 2 * k / T))),
}


@pytest.mark.parametrize("name", list(LEVEL_CASES))
def test_level_histogram_matches_the_distribution(name):
    sampler, expected = LEVEL_CASES[name]
    observed = level_histogram(sampler).tolist()
    assert observed == pytest.approx(expected, abs=0.01)


def test_weighted_levels_are_a_continuous_inverse_cdf():
    # levels, not DDPM indices scaled down: far more than 1000 values
    levels = draw_levels(LaterTimeSteps(5, 0.25), 4000)
    assert len(levels.unique()) > 3900
    # bias_portion 0: uniform; 1: uniform again
    for portion in (0.0, 1.0):
        observed = level_histogram(LaterTimeSteps(5, portion)).tolist()
        assert observed == pytest.approx([0.1] * 10, abs=0.01)


def test_later_means_noisier_under_both_schedules():
    # DDPM: higher index is noisier; flow: higher σ is noisier
    uniform, later, earlier = (UniformTimeSteps(), LaterTimeSteps(),
                               EarlierTimeSteps())
    randomness = Randomness([torch.Generator().manual_seed(0)] * DRAWS)
    index_means = {name: sampler(randomness, T).double().mean().item() / T
                   for name, sampler in (("uniform", uniform),
                                         ("later", later),
                                         ("earlier", earlier))}
    level_means = {name: draw_levels(sampler).double().mean().item()
                   for name, sampler in (("uniform", uniform),
                                         ("later", later),
                                         ("earlier", earlier))}
    for means in (index_means, level_means):
        assert means["earlier"] < means["uniform"] - 0.05
        assert means["later"] > means["uniform"] + 0.05
    # the same distribution either way: the index is ⌊level·T⌋
    for name in index_means:
        assert index_means[name] == pytest.approx(level_means[name],
                                                  abs=0.01)


def test_time_steps_is_the_uniform_sampler():
    assert TimeSteps is UniformTimeSteps
    assert MODELS.get("TimeSteps") is UniformTimeSteps
    assert isinstance(MODELS.build(dict(type="TimeSteps")), UniformTimeSteps)


def test_shifted_levels_compose_with_the_inner_sampler():
    inner = dict(type="LogitNormalTimeSteps", mean=0.3)
    shifted = ShiftedTimeSteps(sampler=inner, shift=2.0)
    levels = draw_levels(shifted, 1000)
    plain = draw_levels(LogitNormalTimeSteps(mean=0.3), 1000)
    # the odds σ/(1 − σ) double
    torch.testing.assert_close(levels / (1 - levels),
                               2 * plain / (1 - plain), rtol=1e-4, atol=0)
    indices = shifted(Randomness([torch.Generator().manual_seed(0)] * 1000),
                      T)
    assert torch.equal(indices, (levels * T).long().clamp(0, T - 1))
    with pytest.raises(ConfigError, match="shift=0 must be > 0"):
        ShiftedTimeSteps(shift=0)
    with pytest.raises(ConfigError, match=r"timesteps_generator\.sampler\."
                       "type='L2Loss' is not a TimeStepSampler"):
        ShiftedTimeSteps(sampler=dict(type="L2Loss"))
    with pytest.raises(ConfigError, match=r"mode_scale=2\.0 must be in"):
        ModeTimeSteps(mode_scale=2.0)


# ---- DDPM indices: the samplers as they drew them before levels --------


def reference_uniform(randomness, num_train_timesteps):
    return randomness.randint(num_train_timesteps)


def reference_weighted(weights):
    def draw(randomness, num_train_timesteps):
        w = weights(num_train_timesteps).double()
        cdf = (w / w.sum()).cumsum(0)
        uniform = randomness.rand().cpu().double()
        timesteps = torch.searchsorted(cdf, uniform, right=True)
        return timesteps.clamp(max=num_train_timesteps - 1).to(
            randomness.device)
    return draw


def later_weights(multiplier, portion):
    def weights(num_train_timesteps):
        w = torch.ones(num_train_timesteps)
        biased = int(portion * num_train_timesteps)
        if biased:
            w[-biased:] *= multiplier
        return w
    return weights


def range_weights(multiplier, begin, end):
    def weights(num_train_timesteps):
        w = torch.ones(num_train_timesteps)
        w[int(begin * num_train_timesteps):int(end * num_train_timesteps)] *= (
            multiplier)
        return w
    return weights


def reference_cubic(randomness, num_train_timesteps):
    uniform = randomness.rand()
    timesteps = ((1 - uniform**3) * num_train_timesteps).long()
    return timesteps.clamp(0, num_train_timesteps - 1)


def reference_logit_normal(mean, std):
    def draw(randomness, num_train_timesteps):
        normal = randomness.randn()
        fraction = torch.sigmoid(mean + std * normal)
        timesteps = (fraction * num_train_timesteps).long()
        return timesteps.clamp(0, num_train_timesteps - 1)
    return draw


REFERENCES = {
    "uniform": (TimeSteps(), reference_uniform),
    "later": (LaterTimeSteps(5, 0.25),
              reference_weighted(later_weights(5, 0.25))),
    "earlier": (EarlierTimeSteps(3, 0.3), reference_weighted(
        lambda n: later_weights(3, 0.3)(n).flip(0))),
    "range": (RangeTimeSteps(4, 0.2, 0.5),
              reference_weighted(range_weights(4, 0.2, 0.5))),
    "cubic": (CubicSamplingTimeSteps(), reference_cubic),
    "logit-normal": (LogitNormalTimeSteps(0.5, 1.5),
                     reference_logit_normal(0.5, 1.5)),
}


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("num_train_timesteps", [1000, 37])
def test_ddpm_indices_are_drawn_as_before(name, num_train_timesteps):
    sampler, reference = REFERENCES[name]
    seeds = list(range(2000))
    new = sampler(Randomness.from_seeds(seeds, "model"), num_train_timesteps)
    old = reference(Randomness.from_seeds(seeds, "model"),
                    num_train_timesteps)
    assert new.dtype == old.dtype == torch.int64
    assert torch.equal(new, old)
