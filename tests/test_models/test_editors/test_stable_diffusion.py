import os

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from mmengine.logging import MMLogger
from safetensors import safe_open

from diffengine.adapters import add_adapter, count_trainable_parameters
from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion
from diffengine.testing import SD15_UNET_CONFIG
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
    # peft's names, the rank in the file the configured rank
    assert {shapes[k][0] for k in unet_keys if k.endswith("lora_A.weight")
            } == {4}
    assert {shapes[k][0] for k in text_keys if k.endswith("lora_A.weight")
            } == {2}

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


@pytest.mark.parametrize("rank", [1, 8])
def test_sd15_attention_lora_has_199296_parameters_per_rank(rank):
    # The SD1.5 architecture on the meta device: shapes without memory.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    unet.requires_grad_(False)
    add_adapter(unet, dict(r=rank, target_modules=UNET_TARGETS),
                "unet_lora_config")
    assert count_trainable_parameters(unet) == 199_296 * rank


def test_the_trainable_parameter_count_is_logged(tiny_sd, tmp_path):
    log_file = tmp_path / "count.log"
    MMLogger.get_instance("count-test", log_file=str(log_file))
    model = build(tiny_sd)
    counts = model.trainable_parameter_counts()
    assert counts == {"unet": 15_360, "text_encoder": 2_560}
    assert ("LoRA: 17,920 trainable parameters (unet 15,360, text_encoder "
            "2,560); frozen base in float32") in log_file.read_text()


def test_attention_runs_through_sdpa(tiny_sd):
    model = build(tiny_sd)
    processors = set(map(type, model.unet.attn_processors.values()))
    assert processors == {AttnProcessor2_0}
    assert model.text_encoder.config._attn_implementation == "sdpa"


def fixed_loss(model, inputs=None):
    noise = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    return model.denoising_loss(inputs or batch(), noise,
                                torch.tensor([10, 500]),
                                torch.Generator().manual_seed(5))


def test_base_in_bfloat16_keeps_lora_in_fp32(tiny_sd):
    reference = build(tiny_sd)
    model = build(tiny_sd, weight_dtype="bfloat16")
    model.load_state_dict(reference.state_dict(), strict=False)
    dtypes = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {
        torch.float32}
    loss = fixed_loss(model)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, fixed_loss(reference), rtol=0.05, atol=0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    with pytest.raises(ConfigError, match=r"weight_dtype='fp16'; choose one "
                       r"of \['bfloat16', 'float16', 'float32'\]"):
        build(tiny_sd, weight_dtype="fp16")


def test_channels_last_gives_the_same_loss(tiny_sd):
    reference = build(tiny_sd)
    model = build(tiny_sd, channels_last=True)
    model.load_state_dict(reference.state_dict(), strict=False)
    conv = model.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    torch.testing.assert_close(fixed_loss(model), fixed_loss(reference))


def test_cached_latents_give_the_same_loss_as_images(tiny_sd):
    model = build(tiny_sd)
    inputs = batch()
    latents = model.encode_images(inputs["img"])
    assert latents.shape == (2, 8, 32, 32) and latents.dtype == torch.float32
    cached = {"latents": latents, "text": inputs["text"]}
    assert fixed_loss(model, cached) == fixed_loss(model, inputs)


def test_cached_text_embeddings_give_the_same_loss(tiny_sd):
    reference = build(tiny_sd, text_encoder=False)
    model = build(tiny_sd, text_encoder=False, cache_text_embeddings=True)
    model.load_state_dict(reference.state_dict(), strict=False)
    assert fixed_loss(model) == fixed_loss(reference)
    assert len(model.text_embeddings) == 2
    model.encode_prompt(["a red circle", "a green triangle"])
    assert len(model.text_embeddings) == 3  # only the new caption encoded
    with pytest.raises(ConfigError, match="the text encoder trains"):
        build(tiny_sd, cache_text_embeddings=True)
