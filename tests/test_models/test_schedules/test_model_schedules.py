"""The schedule in the model: the DDPM steps of SD 1.x and SDXL are those of
the objective written out in ``predict`` before schedules, bit for bit; a
flow-matching schedule trains with every noise and input perturbation."""
from typing import ClassVar

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion, StableDiffusionXL
from diffengine.models.losses import LossContext
from diffengine.models.schedules import DDPMSchedule, FlowMatchSchedule
from tests.conftest import UNET_TARGETS

FLOW = dict(type="FlowMatchSchedule", shift=3.0)


def build(model_class, base, **kwargs):
    return model_class(
        base, unet_lora_config=dict(r=2, target_modules=UNET_TARGETS),
        **kwargs)


def batch(model_class, seeds=(11, 12, 13, 14)):
    generator = torch.Generator().manual_seed(0)
    n = len(seeds)
    inputs = {"img": torch.rand(n, 3, 64, 64, generator=generator) * 2 - 1,
              "text": ["a red circle", "", "a blue square", "a zorb"][:n],
              "seed": list(seeds),
              "loss_weight": [1.0, 0.5, 1.0, 2.0][:n]}
    if model_class is StableDiffusionXL:
        inputs["time_ids"] = torch.tensor([[64, 64, 0, 0, 64, 64]] * n,
                                          dtype=torch.float32)
    return inputs


def predict_before_schedules(model, inputs, randomness):
    """``LatentDiffusionModel.predict`` as it read before schedules."""
    moments = model.encode_images(inputs["img"])
    latent_dist = DiagonalGaussianDistribution(moments.float())
    mean = latent_dist.mean
    latents = mean + latent_dist.std * randomness.randn(*mean.shape[1:])
    latents = latents * model.vae.config.scaling_factor
    noise = model.noise_generator(latents, randomness).to(latents)
    timesteps = model.timesteps_generator(
        randomness, model.scheduler.config.num_train_timesteps)
    timesteps = timesteps.to(latents.device)
    input_noise = noise
    if model.input_perturbation_gamma > 0:
        input_noise = noise + model.input_perturbation_gamma * (
            randomness.randn(*noise.shape[1:]))
    noisy_latents = model.scheduler.add_noise(latents, input_noise, timesteps)
    if model.prediction_type == "epsilon":
        target = noise
    else:
        target = model.scheduler.get_velocity(latents, noise, timesteps)
    prompt = model.encode_prompt(list(inputs["text"]))
    if isinstance(prompt, tuple):  # SDXL: added conditioning
        embeddings, pooled = prompt
        conditioning = {"encoder_hidden_states": embeddings,
                        "added_cond_kwargs": {
                            "text_embeds": pooled,
                            "time_ids": inputs["time_ids"].to(embeddings)}}
    else:
        conditioning = {"encoder_hidden_states": prompt}
    prediction = model.unet(noisy_latents, timesteps, **conditioning).sample
    alphas = model.scheduler.alphas_cumprod[timesteps]
    return (prediction.float(), target.float(), timesteps,
            (alphas / (1 - alphas)).float(),
            torch.as_tensor(inputs["loss_weight"]))


TECHNIQUES = {
    "plain": {},
    "everything": dict(
        loss=dict(type="SNRL2Loss", snr_gamma=5.0),
        noise_generator=dict(type="PyramidNoise", discount=0.8),
        timesteps_generator=dict(type="LaterTimeSteps"),
        input_perturbation_gamma=0.1),
    "offset-cubic": dict(
        noise_generator=dict(type="OffsetNoise", offset_weight=0.1),
        timesteps_generator=dict(type="CubicSamplingTimeSteps")),
    "logit-normal": dict(timesteps_generator=dict(
        type="LogitNormalTimeSteps", std=1.2)),
}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_ddpm_step_is_the_one_before_schedules(request, family,
                                               prediction_type, technique):
    model_class = StableDiffusion if family == "sd" else StableDiffusionXL
    base = request.getfixturevalue(f"tiny_{family}")
    model = build(model_class, base, prediction_type=prediction_type,
                  **TECHNIQUES[technique])
    assert isinstance(model.schedule, DDPMSchedule)
    assert model.prediction_type == prediction_type
    inputs = batch(model_class)
    with torch.no_grad():
        prediction, target, context = model.predict(
            inputs, model.randomness(inputs))
        expected = predict_before_schedules(model, inputs,
                                            model.randomness(inputs))
    assert torch.equal(prediction, expected[0])
    assert torch.equal(target, expected[1])
    assert torch.equal(context.timesteps, expected[2])
    assert torch.equal(context.snr(), expected[3])
    assert torch.equal(context.weight, expected[4])


@pytest.mark.parametrize("noise_generator", [
    dict(type="WhiteNoise"), dict(type="OffsetNoise", offset_weight=0.1),
    dict(type="PyramidNoise", discount=0.8)])
@pytest.mark.parametrize("gamma", [0.0, 0.1])
def test_flow_trains_with_every_noise_and_input_perturbation(
        tiny_sd, noise_generator, gamma):
    model = build(StableDiffusion, tiny_sd, schedule=FLOW,
                  noise_generator=noise_generator,
                  input_perturbation_gamma=gamma,
                  loss=dict(type="SNRL2Loss", snr_gamma=5.0))
    assert isinstance(model.schedule, FlowMatchSchedule)
    assert model.prediction_type == "flow"
    seen = {}
    model.unet.register_forward_pre_hook(
        lambda m, args: seen.update(noisy=args[0], timesteps=args[1]))
    inputs = batch(StableDiffusion)
    prediction, target, context = model.predict(inputs,
                                                model.randomness(inputs))
    assert isinstance(context, LossContext)
    assert context.prediction_type == "flow"
    assert seen["timesteps"].dtype == torch.float32
    assert ((seen["timesteps"] > 0) & (seen["timesteps"] < 1000)).all()
    sigma = (context.timesteps / 1000).view(-1, 1, 1, 1)
    if gamma == 0:
        # x_t − σ·(ε − x0) = x0, and x0 noised with ε is x_t again
        x0 = seen["noisy"] - sigma * target
        torch.testing.assert_close(
            model.schedule.noisy(x0, x0 + target, context.timesteps),
            seen["noisy"], rtol=0, atol=1e-5)
    else:
        # the same x0, noise and σ as without perturbation, the noisy input
        # moved by σ·γ·n for fresh normal n
        plain = build(StableDiffusion, tiny_sd, schedule=FLOW,
                      noise_generator=noise_generator)
        plain.unet.register_forward_pre_hook(
            lambda m, args: seen.update(plain=args[0]))
        with torch.no_grad():
            _, plain_target, plain_context = plain.predict(
                inputs, plain.randomness(inputs))
        assert torch.equal(target, plain_target)
        assert torch.equal(context.timesteps, plain_context.timesteps)
        difference = (seen["noisy"] - seen["plain"]).flatten(1)
        scale = (difference.std(1) / sigma.flatten()).tolist()
        assert scale == pytest.approx([gamma] * 4, rel=0.15)
    loss = model.loss_fn(prediction, target, context)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all()
                         for g in grads)


class FlowStableDiffusion(StableDiffusion):
    """SD 1.x trained with rectified flow: a family whose default is the
    flow-matching schedule."""

    default_schedule: ClassVar[dict] = dict(type="FlowMatchSchedule")


def test_the_family_default_and_the_config_option(tiny_sd):
    family = build(FlowStableDiffusion, tiny_sd)
    assert isinstance(family.schedule, FlowMatchSchedule)
    assert family.schedule.shift == 1.0  # DDPMScheduler's config has none
    overridden = build(FlowStableDiffusion, tiny_sd,
                       schedule=dict(type="DDPMSchedule"),
                       prediction_type="v_prediction")
    assert isinstance(overridden.schedule, DDPMSchedule)
    assert overridden.prediction_type == "v_prediction"
    assert build(StableDiffusion, tiny_sd, schedule=FLOW).schedule.shift == 3


def test_flow_validation_loss_at_fixed_timesteps(tiny_sd):
    model = build(StableDiffusion, tiny_sd, schedule=FLOW)
    losses = model.validation_loss(batch(StableDiffusion, seeds=(1, 2)),
                                   (100, 500, 900))
    assert losses.shape == (2, ) and torch.isfinite(losses).all()


def test_flow_refuses_what_it_does_not_define(tiny_sd):
    with pytest.raises(ConfigError, match=r"^prediction_type='epsilon' is not "
                       r"one of FlowMatchSchedule's \['flow'\]"):
        build(StableDiffusion, tiny_sd, schedule=FLOW,
              prediction_type="epsilon")
    with pytest.raises(ConfigError, match=r"^loss=DeBiasEstimationLoss is "
                       r"defined for epsilon and v-prediction, not under "
                       r"FlowMatchSchedule"):
        build(StableDiffusion, tiny_sd, schedule=FLOW,
              loss=dict(type="DeBiasEstimationLoss"))
    with pytest.raises(ConfigError, match=r"^HuberLoss schedule='snr'"):
        build(StableDiffusion, tiny_sd, schedule=FLOW,
              loss=dict(type="HuberLoss", schedule="snr"))
