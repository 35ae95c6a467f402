"""Flux: CLIP-L's pooled output and T5's tokens, 2×2-packed latents, the
resolution-dependent flow-matching shift, and step folders that
FluxPipeline.load_lora_weights reproduces."""
import pytest
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from diffengine.errors import ConfigError
from diffengine.generation import GenerationOptions
from diffengine.inference import generation_defaults
from diffengine.models import Flux
from diffengine.models.schedules import FlowMatchSchedule
from tests.conftest import SD3_TARGETS, TEXT_TARGETS, perturb_lora

# Flux's attentions have SD3's projection names (the single-stream blocks
# lack to_out and the add_* projections).
FLUX_TARGETS = SD3_TARGETS


def build(tiny_flux, text_encoder=True, **kwargs):
    return Flux(
        tiny_flux,
        transformer_lora_config=dict(r=4, lora_alpha=2,
                                     target_modules=FLUX_TARGETS),
        text_encoder_lora_config=dict(r=2, lora_alpha=8,
                                      target_modules=TEXT_TARGETS)
        if text_encoder else None,
        **kwargs)


def steps_and_guidance(options):
    return options.num_inference_steps, options.guidance_scale


def batch(n=2, size=64):
    generator = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "text": ["a red circle", "a blue square"][:n],
        "seed": [5, 6][:n],
    }


def test_transformer_and_clip_adapt_t5_never(tiny_flux):
    model = build(tiny_flux)
    assert model.trainable_parts == ["transformer", "text_encoder"]
    assert isinstance(model.schedule, FlowMatchSchedule)
    assert model.prediction_type == "flow"
    assert model.architecture == "flux-1-dev"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    loss = model(batch(), mode="loss")["loss"]
    loss.backward()
    grads = {n.split(".")[0] for n, p in model.named_parameters()
             if p.grad is not None}
    assert grads == {"transformer", "text_encoder"}


def test_prompt_conditioning_is_the_pipelines(tiny_flux):
    model = build(tiny_flux, text_encoder=False, max_sequence_length=40)
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    with torch.no_grad():
        embeddings, pooled = model.encode_text(["a red circle", "a zorb"])
        expected, expected_pooled, _ = pipe.encode_prompt(
            ["a red circle", "a zorb"], max_sequence_length=40)
    assert embeddings.shape[1] == 40
    assert torch.equal(embeddings, expected)
    assert torch.equal(pooled, expected_pooled)


def test_the_transformer_sees_what_the_pipeline_gives_it(tiny_flux):
    """One Euler step of FluxPipeline from σ to 0 is x − σ·v: v, the
    transformer's velocity with the pipeline's packing, ids, timestep and
    guidance, is what :meth:`Flux.denoise` predicts."""
    model = build(tiny_flux, text_encoder=False, max_sequence_length=16,
                  guidance_scale=2.0)
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    noisy = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    packed = FluxPipeline._pack_latents(noisy, 1, 16, 8, 8)
    with torch.no_grad():
        stepped = pipe("a red circle", height=64, width=64, sigmas=[0.6],
                       guidance_scale=2.0, max_sequence_length=16,
                       latents=packed, output_type="latent").images
        sigma = pipe.scheduler.sigmas[0]
        ours = model.denoise(noisy, (sigma * 1000).reshape(1), {},
                             model.encode_text(["a red circle"]))
    velocity = FluxPipeline._unpack_latents((packed - stepped) / sigma,
                                            8, 8, 1)
    torch.testing.assert_close(ours, velocity, atol=1e-5, rtol=1e-4)


def test_the_shift_grows_with_the_resolution(tiny_flux):
    model = build(tiny_flux, text_encoder=False)
    assert model.schedule.use_dynamic_shifting
    config = model.scheduler.config
    for side in (8, 32, 128):
        latents = torch.zeros(1, 16, side, side)
        expected = calculate_shift(
            (side // 2)**2, config.base_image_seq_len,
            config.max_image_seq_len, config.base_shift, config.max_shift)
        assert model.schedule.mu(latents) == pytest.approx(expected)
    sigmas = torch.tensor([0.5])
    small, large = (model.schedule.shifted(sigmas, torch.zeros(1, 16, s, s))
                    for s in (8, 128))
    assert sigmas < small < large


def test_step_folder_reproduces_the_model_in_diffusers(tiny_flux, tmp_path):
    model = build(tiny_flux)
    perturb_lora(model)
    step = tmp_path / "step3"
    model.save_lora_weights(str(step), {"step": "3"})
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.load_lora_weights(str(step))
    model.eval()
    noisy = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([500.0])
    with torch.no_grad():
        prompt = model.encode_text(["a red circle"])
        ours = model.denoise(noisy, timesteps, {}, prompt)
        theirs_prompt = pipe.encode_prompt(
            ["a red circle"], max_sequence_length=model.max_sequence_length)
        model.transformer, mine = pipe.transformer, model.transformer
        theirs = model.denoise(noisy, timesteps, {}, prompt)
        model.transformer = mine
    assert (ours - theirs).abs().max() < 1e-5
    assert (theirs_prompt[0] - prompt[0]).abs().max() < 1e-5
    assert (theirs_prompt[1] - prompt[1]).abs().max() < 1e-5
    # the adapters changed what the base computes
    base = FluxPipeline.from_pretrained(tiny_flux)
    with torch.no_grad():
        base_pooled = base.encode_prompt(["a red circle"],
                                         max_sequence_length=8)[1]
        model.transformer = base.transformer
        plain = model.denoise(noisy, timesteps, {}, prompt)
        model.transformer = mine
    assert (plain - ours).abs().max() > 1e-3
    assert (base_pooled - prompt[1]).abs().max() > 1e-3


def test_schnell_has_no_guidance_and_its_own_defaults(tiny_flux_schnell):
    model = build(tiny_flux_schnell, text_encoder=False)
    assert model.guidance_scale is None
    assert model.architecture == "flux-1-schnell"
    assert model.max_sequence_length == 256
    assert not model.schedule.use_dynamic_shifting
    assert model.schedule.shift == 1.0
    assert steps_and_guidance(model.generation_defaults()) == (4, 0.0)
    # the same defaults wherever a [schnell] base's pipeline samples
    # (generate, class images, demo); the class alone is [dev]'s
    pipe = FluxPipeline.from_pretrained(tiny_flux_schnell)
    assert steps_and_guidance(generation_defaults(pipe)) == (4, 0.0)
    assert steps_and_guidance(generation_defaults(pipe).overridden_by(
        GenerationOptions(guidance_scale=1.0))) == (4, 1.0)
    assert steps_and_guidance(generation_defaults(FluxPipeline)) == (28, 3.5)
    assert torch.isfinite(model(batch(), mode="loss")["loss"])
    with pytest.raises(ConfigError, match="embeds no guidance"):
        build(tiny_flux_schnell, text_encoder=False, guidance_scale=1.0)


def test_dev_defaults(tiny_flux):
    model = build(tiny_flux, text_encoder=False)
    assert model.guidance_scale == 1.0
    assert model.max_sequence_length == 512
    assert steps_and_guidance(model.generation_defaults().overridden_by(
        GenerationOptions(guidance_scale=5.0))) == (28, 5.0)


def test_t5_takes_no_adapter(tiny_flux):
    assert build(tiny_flux).text_encoder_names == ("text_encoder", )
    # text_encoder_lora_config reaches CLIP only: T5's projection names
    # (q, k, v, o) match nothing there
    with pytest.raises(ConfigError, match="'q' matches no layer of "
                       "CLIPTextModel"):
        Flux(tiny_flux, text_encoder_lora_config=dict(
            r=2, target_modules=["q", "k", "v", "o"]))
    # nor does an adapter config of its own
    with pytest.raises(ConfigError, match=r"^text_encoder_2_lora_config is "
                       r"set, but Flux adapts no T5 \(text_encoder_2\): "
                       r"drop it; CLIP-L's adapter is "
                       r"text_encoder_lora_config\.$"):
        Flux(tiny_flux, text_encoder_2_lora_config=dict(
            r=2, target_modules=["q", "k", "v", "o"]))


def test_sizes_the_patches_cannot_pack_are_refused(tiny_flux):
    model = build(tiny_flux, text_encoder=False)
    with pytest.raises(ConfigError, match="multiples of 16"):
        model.denoising_loss(batch(size=72))


def test_samples_are_the_pipelines_with_the_trained_t5_length(tiny_flux):
    model = build(tiny_flux, text_encoder=False, max_sequence_length=16)
    image = model.infer(["a red circle"], num_inference_steps=2, height=64,
                        width=64, output_type="np")[0]
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    pipe.set_progress_bar_config(disable=True)

    def drawn(length, guidance_scale=3.5):
        return pipe("a red circle", num_inference_steps=2, height=64,
                    width=64, guidance_scale=guidance_scale,
                    max_sequence_length=length,
                    generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]

    assert abs(image - drawn(16)).max() < 1e-5
    assert abs(image - drawn(512)).max() > 1e-4
    assert abs(image - drawn(16, guidance_scale=1.0)).max() > 1e-4


def test_the_training_guidance_reaches_the_step_and_the_kohya_file(
        tiny_flux, tmp_path):
    from safetensors import safe_open

    from diffengine.export.standalone_lora import export_lora

    model = build(tiny_flux, text_encoder=False, guidance_scale=2.5)
    perturb_lora(model)
    step = tmp_path / "step4"
    model.save_lora_weights(str(step), {"step": "4"})
    with safe_open(str(step / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f.metadata()["diffengine.guidance_scale"] == "2.5"
    out = tmp_path / "flux_kohya.safetensors"
    export_lora(str(step), str(out))
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
        keys = list(f.keys())
    assert metadata["ss_guidance_scale"] == "2.5"
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv")
               for k in keys)


def test_demo_samples_a_schnell_step_as_infer_does(tiny_flux_schnell,
                                                   tmp_path):
    """``demo``'s path (load_pipeline, then generate with nothing but the
    prompt, seed and size) draws a [schnell] step with [schnell]'s 4 steps,
    no guidance and T5 length 256, as the trained model's infer does."""
    from diffengine.inference import generate, load_pipeline

    model = build(tiny_flux_schnell, text_encoder=False)
    perturb_lora(model)
    step = tmp_path / "step2"
    model.save_lora_weights(str(step), {"step": "2"})
    kwargs = dict(height=32, width=32, output_type="np")
    trained = model.infer(["a red circle"], seed=3, **kwargs)[0]
    pipe = load_pipeline(tiny_flux_schnell, str(step))
    assert abs(generate(pipe, "a red circle", [3], **kwargs)[0]
               - trained).max() <= 1e-5
    # FluxPipeline's own defaults ([dev]'s 28 steps, T5 length 512) draw
    # another image
    for other in (dict(num_inference_steps=28), dict(max_sequence_length=512)):
        assert abs(generate(pipe, "a red circle", [3], **kwargs, **other)[0]
                   - trained).max() > 1e-4, other
