"""StableDiffusion3: three text encoders, the flow-matching objective, and
step folders that StableDiffusion3Pipeline.load_lora_weights reproduces."""
import os
import shutil

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion3
from diffengine.models.schedules import FlowMatchSchedule
from tests.conftest import SD3_TARGETS, TEXT_TARGETS, perturb_lora


def build(tiny_sd3, text_encoder=True, **kwargs):
    return StableDiffusion3(
        tiny_sd3,
        transformer_lora_config=dict(r=4, lora_alpha=2,
                                     target_modules=SD3_TARGETS),
        text_encoder_lora_config=dict(r=2, lora_alpha=8,
                                      target_modules=TEXT_TARGETS)
        if text_encoder else None,
        **kwargs)


def batch(n=2, size=64):
    generator = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "text": ["a red circle", "a blue square"][:n],
        "seed": [5, 6][:n],
    }


def test_transformer_and_both_clips_adapt_t5_never(tiny_sd3):
    model = build(tiny_sd3)
    assert model.trainable_parts == ["transformer", "text_encoder",
                                     "text_encoder_2"]
    assert isinstance(model.schedule, FlowMatchSchedule)
    assert model.prediction_type == "flow"
    assert model.schedule.shift == 3.0  # the scheduler config's
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(n.startswith("text_encoder_3") for n in trainable)
    loss = model(batch(), mode="loss")["loss"]
    loss.backward()
    grads = {n.split(".")[0] for n, p in model.named_parameters()
             if p.grad is not None}
    assert grads == {"transformer", "text_encoder", "text_encoder_2"}


def test_prompt_conditioning_is_the_pipelines(tiny_sd3):
    model = build(tiny_sd3, text_encoder=False)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    with torch.no_grad():
        embeddings, pooled = model.encode_text(["a red circle", "a zorb"])
        expected, _, expected_pooled, _ = pipe.encode_prompt(
            ["a red circle", "a zorb"], None, None,
            do_classifier_free_guidance=False,
            max_sequence_length=model.max_sequence_length)
    assert torch.equal(embeddings, expected)
    assert torch.equal(pooled, expected_pooled)


def test_the_flow_objective_reaches_the_transformer(tiny_sd3):
    model = build(tiny_sd3, text_encoder=False)
    inputs = batch()
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([250.0, 750.0])
    with torch.no_grad():
        prediction, target, context = model.predict(
            inputs, model.randomness(inputs), noise=noise, timesteps=timesteps)
        moments = model.encode_images(inputs["img"])
    assert prediction.shape == target.shape == (2, 16, 8, 8)
    # the target is noise − x0, x0 the VAE sample shifted and scaled
    # (SD3's VAE has a shift_factor)
    mean, _ = moments.chunk(2, dim=1)
    assert mean.shape == noise.shape
    config = model.vae.config
    assert config.shift_factor
    latents = noise - target
    assert (latents.mean() - (mean.mean() - config.shift_factor)
            * config.scaling_factor).abs() < 0.05
    sigmas = timesteps / 1000
    torch.testing.assert_close(context.snr(), ((1 - sigmas) / sigmas)**2)


def test_step_folder_reproduces_the_model_in_diffusers(tiny_sd3, tmp_path):
    model = build(tiny_sd3)
    perturb_lora(model)
    step = tmp_path / "step3"
    model.save_lora_weights(str(step), {"step": "3"})
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    pipe.load_lora_weights(str(step))
    model.eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 16, 8, 8, generator=generator)
    with torch.no_grad():
        embeddings, pooled = model.encode_text(["a red circle"])
        ours = model.transformer(sample, encoder_hidden_states=embeddings,
                                 pooled_projections=pooled,
                                 timestep=torch.tensor([500.0])).sample
        theirs = pipe.transformer(sample, encoder_hidden_states=embeddings,
                                  pooled_projections=pooled,
                                  timestep=torch.tensor([500.0])).sample
        prompt = pipe.encode_prompt(["a red circle"], None, None,
                                    do_classifier_free_guidance=False)
    assert (ours - theirs).abs().max() < 1e-5
    assert (prompt[0] - embeddings).abs().max() < 1e-5
    assert (prompt[2] - pooled).abs().max() < 1e-5
    # the adapters changed what the base computes
    base = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    with torch.no_grad():
        plain = base.transformer(sample, encoder_hidden_states=embeddings,
                                 pooled_projections=pooled,
                                 timestep=torch.tensor([500.0])).sample
    assert (plain - ours).abs().max() > 1e-3


def test_without_t5_the_tokens_are_zeros_and_the_pipeline_has_none(tiny_sd3):
    model = build(tiny_sd3, text_encoder=False, use_t5=False)
    assert not hasattr(model, "text_encoder_3")
    pipe = model.pipeline()
    assert pipe.text_encoder_3 is None
    with torch.no_grad():
        embeddings, _ = model.encode_text(["a red circle"])
        expected = pipe.encode_prompt(["a red circle"], None, None,
                                      do_classifier_free_guidance=False)[0]
    assert embeddings.shape[1] == 77 + model.max_sequence_length
    assert embeddings[:, 77:].abs().max() == 0
    assert torch.equal(embeddings, expected)


def test_a_folder_without_t5_names_the_switch(tiny_sd3, tmp_path):
    folder = tmp_path / "no-t5"
    shutil.copytree(tiny_sd3, folder)
    shutil.rmtree(folder / "text_encoder_3")
    with pytest.raises(ConfigError, match=r"lacks T5 .*'text_encoder_3'.* "
                       r"model\.use_t5=False"):
        build(str(folder), text_encoder=False)
    # and without it asked for, the folder trains
    model = build(str(folder), text_encoder=False, use_t5=False)
    assert torch.isfinite(model(batch(), mode="loss")["loss"])
    assert os.path.isdir(folder / "transformer")


def test_the_unet_spelling_and_undefined_losses_are_refused(tiny_sd3):
    with pytest.raises(ConfigError, match="rename it to transformer_lora_config"):
        StableDiffusion3(tiny_sd3, unet_lora_config=dict(
            r=4, target_modules=SD3_TARGETS))
    with pytest.raises(ConfigError, match="DeBiasEstimationLoss"):
        build(tiny_sd3, text_encoder=False,
              loss=dict(type="DeBiasEstimationLoss"))


def test_sizes_the_patches_cannot_split_are_refused(tiny_sd3):
    model = build(tiny_sd3, text_encoder=False)
    with pytest.raises(ConfigError, match="multiples of 16"):
        model.denoising_loss(batch(size=72))


def test_samples_are_conditioned_with_the_trained_t5_length(tiny_sd3):
    model = build(tiny_sd3, text_encoder=False, max_sequence_length=16)
    image = model.infer(["a red circle"], num_inference_steps=2, height=64,
                        width=64, output_type="np")[0]
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    pipe.set_progress_bar_config(disable=True)

    def drawn(length):
        return pipe("a red circle", num_inference_steps=2, height=64,
                    width=64, guidance_scale=7.0, max_sequence_length=length,
                    generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]

    assert abs(image - drawn(16)).max() < 1e-5
    assert abs(image - drawn(256)).max() > 1e-4
