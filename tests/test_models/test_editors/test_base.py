"""The shared training skeleton: components from configs, the draws."""
import pytest
import torch

from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion
from diffengine.randomness import Randomness
from tests.conftest import UNET_TARGETS

EVERYTHING = dict(
    loss=dict(type="SNRL2Loss", snr_gamma=5.0),
    noise_generator=dict(type="PyramidNoise", discount=0.8),
    timesteps_generator=dict(type="LogitNormalTimeSteps", std=1.2),
    input_perturbation_gamma=0.1,
)


def build(tiny_sd, **kwargs):
    return StableDiffusion(
        tiny_sd, unet_lora_config=dict(r=2, target_modules=UNET_TARGETS),
        **kwargs)


def batch(seeds=(11, 12, 13, 14)):
    generator = torch.Generator().manual_seed(0)
    n = len(seeds)
    return {"img": torch.rand(n, 3, 64, 64, generator=generator) * 2 - 1,
            "text": ["a red circle", "", "a blue square", "a zorb"][:n],
            "seed": list(seeds)}


def test_components_come_from_the_config(tiny_sd):
    model = build(tiny_sd, **EVERYTHING)
    assert type(model.loss_fn).__name__ == "SNRL2Loss"
    assert model.loss_fn.snr_gamma == 5.0
    assert model.noise_generator.discount == 0.8
    assert model.timesteps_generator.std == 1.2
    assert type(build(tiny_sd).loss_fn).__name__ == "L2Loss"


def test_component_errors_name_the_key_and_the_fix(tiny_sd):
    with pytest.raises(ConfigError, match=r"loss\.snr_gama is not an option "
                       r"of SNRL2Loss .* Did you mean 'snr_gamma'\?"):
        build(tiny_sd, loss=dict(type="SNRL2Loss", snr_gama=5))
    with pytest.raises(ConfigError, match=r"timesteps_generator\.type="
                       r"'LaterTimesteps' is not a TimeStepSampler; .* "
                       r"Did you mean 'LaterTimeSteps'\?"):
        build(tiny_sd, timesteps_generator=dict(type="LaterTimesteps"))
    with pytest.raises(ConfigError, match=r"noise_generator\.type='L2Loss' is "
                       "not a WhiteNoise"):
        build(tiny_sd, noise_generator=dict(type="L2Loss"))
    with pytest.raises(ConfigError, match=r"noise_offset=0\.05 was replaced "
                       r"by noise_generator=dict\(type='OffsetNoise', "
                       r"offset_weight=0\.05\)"):
        build(tiny_sd, noise_offset=0.05)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_sample_loss_depends_on_its_seed_alone(tiny_sd, prediction_type):
    model = build(tiny_sd, prediction_type=prediction_type, **EVERYTHING)
    inputs = batch()
    with torch.no_grad():
        together, target, context = model.predict(
            inputs, model.randomness(inputs))
        half = {k: v[2:] for k, v in inputs.items()}
        alone, half_target, half_context = model.predict(
            half, model.randomness(half))
    torch.testing.assert_close(together[2:], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(target[2:], half_target, rtol=0, atol=1e-6)
    assert torch.equal(context.timesteps[2:], half_context.timesteps)
    loss = model.loss_fn(together, target, context)
    assert torch.isfinite(loss) and loss > 0


def test_input_perturbation_changes_the_input_not_the_target(tiny_sd):
    plain = build(tiny_sd)
    perturbed = build(tiny_sd, input_perturbation_gamma=0.1)
    seen = {}
    for name, model in (("plain", plain), ("perturbed", perturbed)):
        model.unet.register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__(name, args[0]))
    inputs = batch()
    with torch.no_grad():
        _, plain_target, plain_context = plain.predict(
            inputs, plain.randomness(inputs))
        _, target, context = perturbed.predict(
            inputs, perturbed.randomness(inputs))
    assert torch.equal(target, plain_target)
    assert torch.equal(context.timesteps, plain_context.timesteps)
    difference = seen["perturbed"] - seen["plain"]
    # sqrt(1 - ᾱ_t) · γ · n for fresh normal n
    sigma = (1 - plain.scheduler.alphas_cumprod[context.timesteps]).sqrt()
    scale = (difference.flatten(1).std(1) / sigma).tolist()
    assert scale == pytest.approx([0.1] * 4, rel=0.15)


def test_text_cache_holds_each_caption_once(tiny_sd):
    model = build(tiny_sd, cache_text_embeddings=True)
    inputs = batch()
    inputs["text"] = ["", "a zorb", "", "a zorb"]
    model.denoising_loss(inputs)
    assert sorted(model.text_embeddings.embeddings) == ["", "a zorb"]


def test_the_fixed_generator_draws_every_sample_in_turn(tiny_sd):
    model = build(tiny_sd, **EVERYTHING)
    inputs = batch()
    losses = [model.denoising_loss(inputs,
                                   generator=torch.Generator().manual_seed(3))
              for _ in range(2)]
    assert losses[0] == losses[1]
    randomness = model.randomness(inputs, torch.Generator())
    assert isinstance(randomness, Randomness) and len(randomness) == 4
