import os

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion
from tests.conftest import TEXT_TARGETS, UNET_TARGETS, perturb_lora


def build(tiny_sd, text_encoder=True, **kwargs):
    return StableDiffusion(
        tiny_sd,
        unet_lora_config=dict(type="LoRA", r=4, lora_alpha=2,
                              target_modules=UNET_TARGETS),
        text_encoder_lora_config=dict(
            type="LoRA", r=2, lora_alpha=8,
            target_modules=TEXT_TARGETS) if text_encoder else None,
        **kwargs)


def batch(n=2, size=64):
    generator = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "text": ["a red circle", "a blue square"][:n],
    }


def test_only_lora_trains_in_fp32(tiny_sd):
    model = build(tiny_sd)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"unet", "text_encoder"}
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters()
               if p.requires_grad)
    # checkpoints hold the adapters only, not the frozen base
    assert set(model.state_dict()) == trainable
    assert model.trainable_parts == ["unet", "text_encoder"]


def test_loss_is_finite_and_reaches_only_lora(tiny_sd):
    model = build(tiny_sd)
    loss = model(batch(), mode="loss")["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(n.startswith("text_encoder.") for n in grads)


def test_fixed_noise_and_timesteps_give_the_same_loss(tiny_sd):
    model = build(tiny_sd)
    noise = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([10, 500])
    losses = [
        model.denoising_loss(batch(), noise, timesteps,
                             torch.Generator().manual_seed(5)).item()
        for _ in range(2)
    ]
    assert losses[0] == losses[1]


def test_v_prediction_targets_velocity(tiny_sd):
    model = build(tiny_sd, prediction_type="v_prediction")
    assert model.prediction_type == "v_prediction"
    epsilon = build(tiny_sd)
    noise = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([900, 950])
    args = (batch(), noise, timesteps)
    v_loss = model.denoising_loss(*args, torch.Generator().manual_seed(5))
    e_loss = epsilon.denoising_loss(*args, torch.Generator().manual_seed(5))
    assert not torch.isclose(v_loss, e_loss)
    with pytest.raises(ConfigError, match="prediction_type='sample'"):
        build(tiny_sd, prediction_type="sample")


def test_gradient_checkpointing_gives_the_same_loss(tiny_sd):
    plain, checkpointed = build(tiny_sd), build(
        tiny_sd, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict(), strict=False)
    assert checkpointed.unet.is_gradient_checkpointing
    noise = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([10, 500])
    losses = [
        m.denoising_loss(batch(), noise, timesteps,
                         torch.Generator().manual_seed(5))
        for m in (plain, checkpointed)
    ]
    torch.testing.assert_close(losses[0], losses[1])


def test_bad_model_paths(tiny_sd, tmp_path):
    lora = dict(target_modules=UNET_TARGETS)
    with pytest.raises(ConfigError, match="neither a folder nor a hub"):
        StableDiffusion(str(tmp_path / "absent"), unet_lora_config=lora)
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"lacks the subfolders "
                       r"\['tokenizer', 'text_encoder', 'vae', 'scheduler'\]"):
        StableDiffusion(str(tmp_path / "partial"), unet_lora_config=lora)
    with pytest.raises(ConfigError, match="nothing would train"):
        StableDiffusion(tiny_sd)
    with pytest.raises(ConfigError, match=r"unet_lora_config\.rank"):
        StableDiffusion(tiny_sd, unet_lora_config=dict(rank=32, **lora))


def test_saved_lora_reproduces_the_model_in_diffusers(tiny_sd, tmp_path):
    model = build(tiny_sd)
    perturb_lora(model)
    model.save_lora_weights(str(tmp_path))
    path = tmp_path / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        shapes = {k: f.get_slice(k).get_shape() for k in keys}
        assert "lora_adapter_metadata" in f.metadata()
    text_keys = [k for k in keys if k.startswith("text_encoder.")]
    unet_keys = [k for k in keys if k.startswith("unet.")]
    assert len(text_keys) + len(unet_keys) == len(keys)
    assert text_keys and all(
        k.startswith("text_encoder.text_model.encoder.layers.")
        for k in text_keys)
    # the rank in the file is the configured rank
    assert {shapes[k][0] for k in unet_keys if k.endswith("down.weight")} == {4}
    assert {shapes[k][0] for k in text_keys if k.endswith("down.weight")} == {2}

    kwargs = dict(num_inference_steps=3, output_type="np")
    trained = model.infer(["a red circle"], seed=7, **kwargs)[0]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    generate = lambda: pipe(  # noqa: E731
        "a red circle", generator=torch.Generator().manual_seed(7),
        **kwargs).images[0]
    base = generate()
    pipe.load_lora_weights(str(tmp_path))
    loaded = generate()
    assert abs(loaded - trained).max() <= 1e-5
    # alpha != rank on both parts: a lost alpha would show here
    assert abs(loaded - base).max() > 1e-2
    assert os.listdir(tmp_path) == ["pytorch_lora_weights.safetensors"]


def test_infer_returns_uint8_images(tiny_sd):
    model = build(tiny_sd, text_encoder=False)
    images = model.infer(["a", "b"], num_inference_steps=2, height=32, width=48)
    assert [i.shape for i in images] == [(32, 48, 3)] * 2
    assert images[0].dtype.name == "uint8"
    assert model.training  # infer restores the mode
