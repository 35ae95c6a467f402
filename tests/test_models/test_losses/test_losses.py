"""The losses against their closed forms, for every prediction type."""
import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from diffengine.errors import ConfigError
from diffengine.models.losses import (
    DeBiasEstimationLoss,
    HuberLoss,
    L2Loss,
    LossContext,
    SNRL2Loss,
)
from diffengine.models.schedules import DDPMSchedule, FlowMatchSchedule

SCHEDULER = DDPMScheduler(beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
TIMESTEPS = torch.tensor([0, 10, 250, 500, 999])
FLOW = FlowMatchSchedule(FlowMatchEulerDiscreteScheduler(shift=3.0))
SIGMAS = torch.tensor([0.0, 0.01, 0.25, 0.5, 0.9, 1.0])


def context(prediction_type="epsilon", weight=None, timesteps=TIMESTEPS):
    schedule = DDPMSchedule(SCHEDULER.from_config(SCHEDULER.config),
                            prediction_type)
    return schedule.loss_context(timesteps, weight)


def flow_context(sigmas=SIGMAS):
    return FLOW.loss_context(sigmas * 1000)


def pair(seed=0, batch=5):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=generator),
            torch.randn(batch, 4, 8, 8, generator=generator))


def mse(prediction, target):
    return ((prediction - target)**2).mean(dim=(1, 2, 3))


def closed_form_snr(t):
    alpha_bar = SCHEDULER.alphas_cumprod[t].double()
    return alpha_bar / (1 - alpha_bar)


def test_l2_is_the_mse_and_weights_samples():
    prediction, target = pair()
    assert L2Loss()(prediction, target, context()) == pytest.approx(
        torch.nn.functional.mse_loss(prediction, target).item(), rel=1e-6)
    weight = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.5])
    expected = (mse(prediction, target) * weight).mean()
    assert L2Loss(loss_weight=3)(prediction, target, context(
        weight=weight)).item() == pytest.approx(3 * expected.item(), rel=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_are_the_closed_form(prediction_type):
    gamma = 5.0
    loss = SNRL2Loss(snr_gamma=gamma)
    weights = loss.weights(context(prediction_type))
    for t, weight in zip(TIMESTEPS.tolist(), weights.tolist(), strict=True):
        snr = closed_form_snr(t).item()
        expected = min(snr, gamma) / (snr if prediction_type == "epsilon"
                                      else snr + 1)
        assert weight == pytest.approx(expected, rel=1e-5), t
    # SNR above γ at t=0 (clamped), below it at t=999
    assert weights[0] < 1 and closed_form_snr(999) < gamma
    if prediction_type == "epsilon":
        assert weights[-1] == pytest.approx(1.0)
    prediction, target = pair()
    assert loss(prediction, target, context(prediction_type)).item() == (
        pytest.approx((mse(prediction, target) * weights).mean().item(),
                      rel=1e-6))
    with pytest.raises(ConfigError, match="snr_gamma=0"):
        SNRL2Loss(snr_gamma=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_debias_weights_are_one_over_root_snr_clipped(prediction_type):
    weights = DeBiasEstimationLoss().weights(context(prediction_type))
    for t, weight in zip(TIMESTEPS.tolist(), weights.tolist(), strict=True):
        snr = min(closed_form_snr(t).item(), 1000.0)
        if prediction_type == "v_prediction":
            snr += 1
        assert weight == pytest.approx(1 / math.sqrt(snr), rel=1e-5), t
    # a schedule whose first SNR is infinite stays finite
    infinite = LossContext(torch.tensor([0]), torch.tensor([1.0]),
                           torch.tensor([0.0]), 2, "epsilon")
    assert DeBiasEstimationLoss().weights(infinite).item() == pytest.approx(
        1 / math.sqrt(1000))


def test_pseudo_huber_is_mse_near_zero_and_linear_far_out():
    loss = HuberLoss(delta=1.0)
    target = torch.zeros(2, 1, 1, 1)
    small = torch.tensor([1e-3, 2e-3]).view(2, 1, 1, 1)
    values = loss.per_sample(small, target, context(timesteps=TIMESTEPS[:2]))
    assert values.tolist() == pytest.approx((small**2).flatten().tolist(),
                                            rel=1e-3)
    large = torch.tensor([100.0, 200.0]).view(2, 1, 1, 1)
    values = loss.per_sample(large, target, context(timesteps=TIMESTEPS[:2]))
    # 2δ(√(r² + δ²) − δ) → 2δ|r| − 2δ²
    assert values.tolist() == pytest.approx([198.0, 398.0], rel=1e-3)


def test_huber_schedules_of_delta():
    ctx = context()
    assert HuberLoss(0.1).deltas(ctx).tolist() == pytest.approx([0.1] * 5)
    exponential = HuberLoss(0.1, "exponential").deltas(ctx)
    assert exponential.tolist() == pytest.approx(
        [0.1**(t / 1000) for t in TIMESTEPS.tolist()], rel=1e-5)
    snr = HuberLoss(0.1, "snr").deltas(ctx)
    for t, value in zip(TIMESTEPS.tolist(), snr.tolist(), strict=True):
        alpha_bar = SCHEDULER.alphas_cumprod[t].item()
        sigma = math.sqrt((1 - alpha_bar) / alpha_bar)
        assert value == pytest.approx(0.9 / (1 + sigma)**2 + 0.1, rel=1e-5)
    assert snr[0] > snr[-1]  # from nearly 1 (MSE-like) down to δ
    prediction, target = pair()
    delta = exponential.view(-1, 1, 1, 1)
    expected = (2 * delta * (((prediction - target)**2 + delta**2).sqrt()
                             - delta)).mean(dim=(1, 2, 3)).mean()
    assert HuberLoss(0.1, "exponential")(
        prediction, target, ctx).item() == pytest.approx(expected.item(),
                                                         rel=1e-6)
    with pytest.raises(ConfigError, match=r"schedule='cosine'; choose one of "
                       r"\['constant', 'exponential', 'snr'\]"):
        HuberLoss(schedule="cosine")


def test_min_snr_under_flow_weighs_the_x0_error():
    gamma = 5.0
    weights = SNRL2Loss(snr_gamma=gamma).weights(flow_context())
    assert torch.isfinite(weights).all()
    for sigma, weight in zip(SIGMAS.tolist(), weights.tolist(), strict=True):
        # x0 = x_t − σ·(ε − x0): the x0 error is σ times the flow error
        snr = math.inf if sigma == 0 else ((1 - sigma) / sigma)**2
        assert weight == pytest.approx(min(snr, gamma) * sigma**2,
                                       rel=1e-5, abs=1e-7), sigma
    # the flow loss then equals the paper's min(SNR, γ)-weighted x0 MSE
    generator = torch.Generator().manual_seed(0)
    x0, noise, flow = (torch.randn(6, 4, 8, 8, generator=generator)
                       for _ in range(3))
    sigma = SIGMAS.view(-1, 1, 1, 1)
    noisy = sigma * noise + (1 - sigma) * x0
    x0_predicted = noisy - sigma * flow
    snr = flow_context().snr().clamp(max=gamma)
    expected = (mse(x0_predicted, x0) * snr).mean()
    assert SNRL2Loss(snr_gamma=gamma)(flow, noise - x0, flow_context(
    )).item() == pytest.approx(expected.item(), rel=1e-5)


def test_flow_snr_is_the_closed_form():
    snr = flow_context(SIGMAS[1:-1]).snr()
    expected = [((1 - s) / s)**2 for s in SIGMAS[1:-1].tolist()]
    assert snr.tolist() == pytest.approx(expected, rel=1e-5)


def test_losses_undefined_under_flow_are_refused():
    with pytest.raises(ConfigError, match=r"^loss=DeBiasEstimationLoss is "
                       r"defined for epsilon and v-prediction, not under "
                       r"FlowMatchSchedule \(flow\): use SNRL2Loss or "
                       r"L2Loss\.$"):
        FLOW.check_loss(DeBiasEstimationLoss())
    with pytest.raises(ConfigError, match=r"^HuberLoss schedule='snr' is "
                       r"defined for DDPM, not under FlowMatchSchedule: use "
                       r"schedule='exponential' or 'constant'\.$"):
        FLOW.check_loss(HuberLoss(0.1, "snr"))
    for loss in (L2Loss(), SNRL2Loss(), HuberLoss(0.1, "constant"),
                 HuberLoss(0.1, "exponential")):
        FLOW.check_loss(loss)
    ddpm = DDPMSchedule(SCHEDULER)
    for loss in (DeBiasEstimationLoss(), HuberLoss(0.1, "snr")):
        ddpm.check_loss(loss)


def test_exponential_huber_under_flow_is_delta_to_the_sigma():
    # kohya's SD3 and Flux trainers: timestep σ·1000 over 1000 timesteps
    deltas = HuberLoss(0.1, "exponential").deltas(flow_context())
    assert deltas.tolist() == pytest.approx(
        [0.1**s for s in SIGMAS.tolist()], rel=1e-5)
