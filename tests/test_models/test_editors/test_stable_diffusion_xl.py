"""StableDiffusionXL: two text encoders, added conditioning, LoRA files."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors import safe_open

from diffengine.adapters import add_adapter, count_trainable_parameters
from diffengine.errors import ConfigError
from diffengine.models import StableDiffusionXL
from diffengine.testing import SDXL_UNET_CONFIG
from tests.conftest import TEXT_TARGETS, UNET_TARGETS, perturb_lora


def build(tiny_sdxl, text_encoder=True, **kwargs):
    return StableDiffusionXL(
        tiny_sdxl,
        unet_lora_config=dict(r=4, lora_alpha=2, target_modules=UNET_TARGETS),
        text_encoder_lora_config=dict(r=2, lora_alpha=8,
                                      target_modules=TEXT_TARGETS)
        if text_encoder else None,
        **kwargs)


def batch(n=2, size=64):
    generator = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "text": ["a red circle", "a blue square"][:n],
        "time_ids": torch.tensor([[80.0, 96.0, 8.0, 16.0, size, size]] * n),
        "seed": [5, 6][:n],
    }


def test_both_text_encoders_adapt_and_only_lora_trains(tiny_sdxl):
    model = build(tiny_sdxl)
    assert model.trainable_parts == ["unet", "text_encoder", "text_encoder_2"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert set(model.state_dict()) == trainable
    loss = model(batch(), mode="loss")["loss"]
    loss.backward()
    grads = {n.split(".")[0] for n, p in model.named_parameters()
             if p.grad is not None}
    assert grads == {"unet", "text_encoder", "text_encoder_2"}


def test_prompt_conditioning_concatenates_penultimate_states(tiny_sdxl):
    model = build(tiny_sdxl, text_encoder=False)
    embeddings, pooled = model.encode_text(["a red circle", "a zorb"])
    assert embeddings.shape == (2, 77, 64)  # 32 + 32 channels
    assert pooled.shape == (2, 32)
    ids = model.tokenizer(["a zorb"], padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    second = model.text_encoder(ids, output_hidden_states=True)
    torch.testing.assert_close(embeddings[1:, :, :32],
                               second.hidden_states[-2])


def test_time_ids_change_the_prediction_and_are_required(tiny_sdxl):
    model = build(tiny_sdxl, text_encoder=False)
    inputs = batch()
    with torch.no_grad():
        first, *_ = model.predict(inputs, model.randomness(inputs))
        moved = dict(inputs, time_ids=inputs["time_ids"] + 40)
        second, *_ = model.predict(moved, model.randomness(moved))
    assert (first - second).abs().max() > 1e-4
    inputs.pop("time_ids")
    with pytest.raises(ConfigError, match="add dict\\(type='ComputeTimeIds'\\)"):
        model.denoising_loss(inputs)


def test_cached_text_embeddings_give_the_same_loss(tiny_sdxl):
    reference = build(tiny_sdxl, text_encoder=False)
    cached = build(tiny_sdxl, text_encoder=False, cache_text_embeddings=True)
    cached.load_state_dict(reference.state_dict(), strict=False)
    loss = reference.denoising_loss(batch())
    assert cached.denoising_loss(batch()) == loss
    assert cached.denoising_loss(batch()) == loss  # from the cache
    assert len(cached.text_embeddings) == 2


def test_saved_lora_reproduces_the_model_in_diffusers(tiny_sdxl, tmp_path):
    model = build(tiny_sdxl)
    perturb_lora(model)
    model.save_lora_weights(str(tmp_path))
    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"),
                   "pt") as f:
        keys = list(f.keys())
        configs = json.loads(f.metadata()["lora_adapter_metadata"])
    assert {k.split(".")[0] for k in keys} == {
        "unet", "text_encoder", "text_encoder_2"}
    for part in ("text_encoder", "text_encoder_2"):
        assert all(k.startswith(f"{part}.text_model.encoder.layers.")
                   for k in keys if k.split(".")[0] == part)
        assert configs[f"{part}.lora_alpha"] == 8
    # guidance as infer() (and the samples and demo) default to; SDXL's
    # pipeline alone would take 5
    kwargs = dict(num_inference_steps=3, output_type="np", height=64,
                  width=64, guidance_scale=7.5)
    trained = model.infer(["a red circle"], seed=7, **kwargs)[0]
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe("a red circle", generator=torch.Generator().manual_seed(7),
                    **kwargs).images[0]

    base = generate()
    pipe.load_lora_weights(str(tmp_path))
    loaded = generate()
    assert abs(loaded - trained).max() <= 1e-5
    assert abs(loaded - base).max() > 1e-2


def test_a_float16_base_keeps_an_upcast_vae_in_float32(tiny_sdxl, tmp_path):
    # a VAE whose activations overflow float16, as SDXL's do
    hot = str(tmp_path / "hot")
    shutil.copytree(tiny_sdxl, hot)
    vae = AutoencoderKL.from_pretrained(tiny_sdxl, subfolder="vae")
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1.5e5)
        vae.encoder.conv_in.bias.mul_(1.5e5)
    vae.save_pretrained(os.path.join(hot, "vae"))
    img = batch()["img"]
    with torch.no_grad():
        assert not torch.isfinite(vae.half().encode(
            img.half()).latent_dist.mean).all()
    model = build(hot, text_encoder=False, weight_dtype="float16")
    assert model.unet.dtype == torch.float16
    assert model.vae.dtype == torch.float32  # force_upcast: no fp16 overflow
    latents = model.encode_images(img)
    assert torch.isfinite(latents).all()
    # the pipeline hands the float32 VAE float16 latents to decode
    image, = model.infer(["a red circle"], height=64, width=64,
                         num_inference_steps=2, output_type="np")
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    # a VAE made for fp16 (force_upcast off) stays in the base's dtype
    fixed = AutoencoderKL.from_pretrained(tiny_sdxl, subfolder="vae")
    fixed.register_to_config(force_upcast=False)
    fixed.save_pretrained(str(tmp_path / "fp16-vae"))
    model = build(tiny_sdxl, text_encoder=False, weight_dtype="float16",
                  vae_model=str(tmp_path / "fp16-vae"))
    assert model.vae.dtype == torch.float16


def test_an_sd1_model_is_refused(tiny_sd, tiny_sdxl):
    with pytest.raises(ConfigError, match=r"lacks the subfolders "
                       r"\['tokenizer_2', 'text_encoder_2'\]"):
        build(tiny_sd)


@pytest.mark.parametrize("rank", [1, 8])
def test_sdxl_attention_lora_has_1451520_parameters_per_rank(rank):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    unet.requires_grad_(False)
    add_adapter(unet, dict(r=rank, target_modules=UNET_TARGETS),
                "unet_lora_config")
    assert count_trainable_parameters(unet) == 1_451_520 * rank


def test_validation_loss_carries_the_time_ids(tiny_sdxl):
    model = build(tiny_sdxl, text_encoder=False)
    inputs = batch()
    with torch.no_grad():
        both = model.validation_loss(inputs, [100, 700])
        alone = model.validation_loss(
            {k: v[1:] for k, v in inputs.items()}, [100, 700])
        moved = model.validation_loss(
            dict(inputs, time_ids=inputs["time_ids"] + 40), [100, 700])
    assert both.shape == (2, )
    torch.testing.assert_close(both[1:], alone, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(both, moved)
