"""The schedules against diffusers' own schedulers: DDPM as it was, bit for
bit; flow matching as FlowMatchEulerDiscreteScheduler noises and shifts."""
import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from diffengine.errors import ConfigError
from diffengine.models.losses import DeBiasEstimationLoss, HuberLoss, SNRL2Loss
from diffengine.models.schedules import (
    DDPMSchedule,
    DiffusionSchedule,
    FlowMatchSchedule,
    build_schedule,
)
from diffengine.models.utils.timesteps import (
    CubicSamplingTimeSteps,
    EarlierTimeSteps,
    LaterTimeSteps,
    LogitNormalTimeSteps,
    ModeTimeSteps,
    RangeTimeSteps,
    ShiftedTimeSteps,
    UniformTimeSteps,
)
from diffengine.randomness import Randomness

SAMPLERS = [UniformTimeSteps(), LaterTimeSteps(), EarlierTimeSteps(),
            RangeTimeSteps(), CubicSamplingTimeSteps(), LogitNormalTimeSteps(),
            ModeTimeSteps(), ShiftedTimeSteps()]


def sd_scheduler(**kwargs):
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear",
                         num_train_timesteps=1000, **kwargs)


def draws(seed=0, shape=(6, 4, 16, 16)):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator),
            torch.randn(shape, generator=generator))


def randomness(n, seed=0):
    return Randomness.from_seeds(range(seed, seed + n), "model")


# ---- DDPM: today's objective, bit for bit ---------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_is_the_scheduler_bit_for_bit(prediction_type):
    scheduler = sd_scheduler(prediction_type=prediction_type)
    schedule = build_schedule(dict(type="DDPMSchedule"), sd_scheduler(),
                              prediction_type)
    assert isinstance(schedule, DDPMSchedule)
    assert schedule.prediction_type == prediction_type
    assert schedule.num_train_timesteps == 1000
    latents, noise = draws()
    timesteps = torch.tensor([0, 1, 250, 500, 998, 999])
    assert torch.equal(schedule.noisy(latents, noise, timesteps),
                       scheduler.add_noise(latents, noise, timesteps))
    expected = noise if prediction_type == "epsilon" else (
        scheduler.get_velocity(latents, noise, timesteps))
    assert torch.equal(schedule.target(latents, noise, timesteps), expected)
    weight = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 1.0])
    context = schedule.loss_context(timesteps, weight)
    assert context.prediction_type == prediction_type
    assert context.num_train_timesteps == 1000
    assert context.weight is weight and context.timesteps is timesteps
    # the SNR and the Huber σ as LossContext and HuberLoss computed them
    # from alphas_cumprod
    alphas = scheduler.alphas_cumprod[timesteps]
    assert torch.equal(context.snr(), (alphas / (1 - alphas)).float())
    sigmas = ((1 - alphas.float()) / alphas.float()).sqrt()
    assert torch.equal(HuberLoss(0.1, "snr").deltas(context),
                       (1 - 0.1) / (1 + sigmas)**2 + 0.1)
    rate = -math.log(0.1) / 1000
    assert torch.equal(HuberLoss(0.1, "exponential").deltas(context),
                       torch.exp(-rate * timesteps.float()))


@pytest.mark.parametrize("sampler", SAMPLERS,
                         ids=[type(s).__name__ for s in SAMPLERS])
def test_ddpm_timesteps_are_the_samplers_indices(sampler):
    schedule = DDPMSchedule(sd_scheduler())
    latents, _ = draws()
    timesteps = schedule.sample_timesteps(sampler, randomness(64), latents)
    assert timesteps.dtype == torch.int64
    assert torch.equal(timesteps, sampler(randomness(64), 1000))


def test_ddpm_takes_the_scheduler_prediction_type_and_refuses_others():
    assert DDPMSchedule(sd_scheduler(prediction_type="v_prediction")
                        ).prediction_type == "v_prediction"
    with pytest.raises(ConfigError, match=r"^prediction_type='sample' is not "
                       r"one of DDPMSchedule's \['epsilon', 'v_prediction'\]"):
        DDPMSchedule(sd_scheduler(), "sample")
    with pytest.raises(ConfigError, match=r"prediction_type='sample' of the "
                       "model's scheduler config"):
        DDPMSchedule(sd_scheduler(prediction_type="sample"))
    with pytest.raises(ConfigError, match=r"^schedule=DDPMSchedule needs a "
                       r"DDPM scheduler; the model's is "
                       r"FlowMatchEulerDiscreteScheduler: use "
                       r"schedule=dict\(type='FlowMatchSchedule'\)\.$"):
        DDPMSchedule(FlowMatchEulerDiscreteScheduler())


# ---- flow matching --------------------------------------------------------


def test_flow_noisy_input_and_sigmas_are_diffusers():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = FlowMatchSchedule(scheduler)
    assert schedule.prediction_type == "flow" and schedule.shift == 3.0
    # the scheduler's training table: σ = k/1000 shifted by 3
    levels = torch.arange(1000, 0, -1) / 1000
    assert len(scheduler.sigmas) == 1000
    torch.testing.assert_close(schedule.shifted(levels, None),
                               scheduler.sigmas, rtol=1e-6, atol=0)
    latents, noise = draws()
    picks = [0, 1, 300, 500, 998, 999]
    timesteps = scheduler.timesteps[picks]
    noisy = schedule.noisy(latents, noise, timesteps)
    torch.testing.assert_close(
        noisy, scheduler.scale_noise(latents, timesteps, noise),
        rtol=0, atol=1e-6)
    sigma = (timesteps / 1000).view(-1, 1, 1, 1)
    assert torch.equal(noisy, sigma * noise + (1 - sigma) * latents)
    assert torch.equal(schedule.target(latents, noise, timesteps),
                       noise - latents)


def test_flow_timesteps_are_shifted_levels_times_1000():
    schedule = FlowMatchSchedule(FlowMatchEulerDiscreteScheduler(shift=3.0))
    latents, _ = draws()
    sampler = LogitNormalTimeSteps()
    timesteps = schedule.sample_timesteps(sampler, randomness(64), latents)
    assert timesteps.dtype == torch.float32
    levels = sampler.levels(randomness(64))
    assert torch.equal(timesteps, 3 * levels / (1 + 2 * levels) * 1000)
    # continuous: not rounded to the scheduler's 1000 values
    assert not torch.equal(timesteps, timesteps.round())
    # the option overrides the config's shift
    unshifted = FlowMatchSchedule(FlowMatchEulerDiscreteScheduler(shift=3.0),
                                  shift=1.0)
    assert torch.equal(
        unshifted.sample_timesteps(sampler, randomness(64), latents),
        levels * 1000)


@pytest.mark.parametrize("time_shift_type", ["exponential", "linear"])
@pytest.mark.parametrize("side", [32, 64, 128])
def test_dynamic_shift_is_diffusers_by_resolution(time_shift_type, side):
    # Flux's scheduler config
    config = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                  max_shift=1.15, base_image_seq_len=256,
                  max_image_seq_len=4096, time_shift_type=time_shift_type)
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    schedule = FlowMatchSchedule(FlowMatchEulerDiscreteScheduler(**config))
    latents = torch.zeros(1, 16, side, side)
    mu = calculate_shift((side // 2) * (side // 2), 256, 4096, 0.5, 1.15)
    assert schedule.mu(latents) == pytest.approx(mu, rel=1e-12)
    levels = [0.95, 0.7, 0.5, 0.3, 0.05]
    scheduler.set_timesteps(sigmas=levels, mu=mu)
    torch.testing.assert_close(
        schedule.shifted(torch.tensor(levels), latents),
        scheduler.sigmas[:-1], rtol=1e-6, atol=0)
    # a larger image is shifted further towards noise
    if time_shift_type == "exponential" and side > 32:
        smaller = torch.zeros(1, 16, side // 2, side // 2)
        assert (schedule.shifted(torch.tensor(levels), latents)
                > schedule.shifted(torch.tensor(levels), smaller)).all()


def test_dynamic_shift_options():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    latents = torch.zeros(1, 16, 64, 64)
    levels = torch.tensor([0.2, 0.5, 0.8])
    dynamic = FlowMatchSchedule(scheduler, use_dynamic_shifting=True,
                                patch_size=1)
    mu = calculate_shift(64 * 64, 256, 4096, 0.5, 1.15)
    # e^mu/(e^mu + 1/σ − 1) multiplies the odds by e^mu
    shifted = dynamic.shifted(levels, latents)
    torch.testing.assert_close(shifted / (1 - shifted),
                               math.exp(mu) * levels / (1 - levels))
    with pytest.raises(ConfigError, match="shift=0 must be > 0"):
        FlowMatchSchedule(scheduler, shift=0)
    with pytest.raises(ConfigError, match="patch_size=0 must be >= 1"):
        FlowMatchSchedule(scheduler, patch_size=0)


@pytest.mark.parametrize("schedule", ["ddpm", "flow"])
def test_later_means_more_noise_under_both(schedule):
    built = (DDPMSchedule(sd_scheduler()) if schedule == "ddpm" else
             FlowMatchSchedule(FlowMatchEulerDiscreteScheduler(shift=3.0)))
    latents = torch.zeros(1, 4, 8, 8)

    def noise_share(sampler):
        # the mean σ² of the noisy input (its share of noise), 4000 draws
        timesteps = built.sample_timesteps(
            sampler, Randomness([torch.Generator().manual_seed(0)] * 4000),
            latents)
        return built.loss_context(timesteps).sigma_squared.mean().item()

    uniform = noise_share(UniformTimeSteps())
    assert noise_share(LaterTimeSteps()) > uniform + 0.02
    assert noise_share(EarlierTimeSteps()) < uniform - 0.02
    assert noise_share(CubicSamplingTimeSteps()) > uniform + 0.02
    assert noise_share(ShiftedTimeSteps(shift=3.0)) > uniform + 0.02
    assert noise_share(RangeTimeSteps(5, 0.8, 1.0)) > uniform + 0.02
    assert noise_share(LogitNormalTimeSteps(mean=1.0)) > (
        noise_share(LogitNormalTimeSteps(mean=-1.0)) + 0.1)


def test_flow_loss_context():
    schedule = FlowMatchSchedule(FlowMatchEulerDiscreteScheduler())
    context = schedule.loss_context(torch.tensor([250.0, 500.0, 800.0]))
    assert context.prediction_type == "flow"
    assert context.num_train_timesteps == 1000
    assert context.snr().tolist() == pytest.approx([9.0, 1.0, 1 / 16])
    assert context.sigma_squared.tolist() == pytest.approx([1 / 16, 1 / 4,
                                                            0.64])
    # validation's integer timesteps are σ·1000 as well
    integer = schedule.loss_context(torch.tensor([250, 500]))
    assert integer.snr().tolist() == pytest.approx([9.0, 1.0])
    assert SNRL2Loss(5.0).weights(context).tolist() == pytest.approx(
        [5 / 16, 1 / 4, 0.64 / 16])


def test_build_schedule_errors_name_the_option():
    scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ConfigError, match=r"^prediction_type='epsilon' is not "
                       r"one of FlowMatchSchedule's \['flow'\]: set one of "
                       r"those or leave it unset\.$"):
        build_schedule(dict(type="FlowMatchSchedule"), scheduler, "epsilon")
    with pytest.raises(ConfigError, match=r"^schedule\.prediction_type: set "
                       r"model\.prediction_type instead\.$"):
        build_schedule(dict(type="DDPMSchedule", prediction_type="epsilon"),
                       sd_scheduler())
    with pytest.raises(ConfigError, match=r"schedule\.type='FlowSchedule' is "
                       r"not a DiffusionSchedule; .*Did you mean "
                       r"'FlowMatchSchedule'\?"):
        build_schedule(dict(type="FlowSchedule"), scheduler)
    with pytest.raises(ConfigError, match=r"schedule\.shfit is not an option "
                       r"of FlowMatchSchedule"):
        build_schedule(dict(type="FlowMatchSchedule", shfit=3.0), scheduler)
    built = FlowMatchSchedule(scheduler)
    assert build_schedule(built, scheduler) is built
    assert isinstance(built, DiffusionSchedule)
    with pytest.raises(ConfigError, match="DeBiasEstimationLoss"):
        built.check_loss(DeBiasEstimationLoss())
