"""FLUX.1 end to end: `mim train` of the [dev] and [schnell] seed configs
on the tiny Flux-shaped models and an image folder no other test reads,
every step folder loaded by diffusers' FluxPipeline, and bad input."""
import os

import pytest
import torch
from diffusers import FluxPipeline

from tests.conftest import REPO, TEXT_TARGETS
from tests.test_engine.test_runner_sd3 import (
    mim_error,
    shrink,
    write_stripes_folder,
)
from tests.test_tools.test_train import mim_train, trained_model

FLUX_DIR = os.path.join(REPO, "configs", "flux_lora")
DEV = os.path.join(FLUX_DIR, "flux_dev_lora_pokemon_blip.py")
SCHNELL = os.path.join(FLUX_DIR, "flux_schnell_lora_pokemon_blip.py")
# CLIP-L's adapter, given on the command line: the seed configs adapt the
# transformer alone
CLIP_LORA = ["model.text_encoder_lora_config.type=LoRA",
             "model.text_encoder_lora_config.r=4",
             "model.text_encoder_lora_config.lora_alpha=4",
             "model.text_encoder_lora_config.target_modules="
             f"[{','.join(TEXT_TARGETS)}]"]
# 4 images, batch 2, 32 px crops (latents of 4 × 4: 2 × 2 patches): 2
# iterations, a checkpoint and a step folder after each.


@pytest.fixture(scope="module")
def flux_stripes(tmp_path_factory) -> str:
    return write_stripes_folder(
        tmp_path_factory.mktemp("data") / "flux-stripes")


@pytest.mark.parametrize("config, variant, extra, parts", [
    (DEV, "dev", [], {"transformer"}),
    (SCHNELL, "schnell", [], {"transformer"}),
    (DEV, "dev", CLIP_LORA, {"transformer", "text_encoder"}),
], ids=["dev", "schnell", "dev-transformer-and-clip"])
def test_seed_config_trains_and_every_step_loads_in_diffusers(
        config, variant, extra, parts, request, tmp_path, flux_stripes):
    tiny = request.getfixturevalue(
        "tiny_flux" if variant == "dev" else "tiny_flux_schnell")
    work = tmp_path / "work"
    options = shrink(tiny, flux_stripes, work, *extra)
    log = mim_train(config, tmp_path, *options)
    assert "CUDA is not available: training in fp32" in log
    assert sorted(p.name for p in work.glob("step*")) == ["step1", "step2"]
    # compared in fp32 (the seed configs keep the frozen base in bfloat16,
    # on CPUs too): the adapters of each step, alike in both
    fp32 = [*options, "model.weight_dtype=float32"]
    pipe = FluxPipeline.from_pretrained(tiny)
    pipe.set_progress_bar_config(disable=True)
    # [dev] at its distilled guidance; [schnell] embeds none
    prompt = "teal stripes"
    # the T5 length the model trains and samples with (512 for [dev], 256
    # for [schnell]), which FluxPipeline takes as an argument
    length = trained_model(config, work, "iter_1.pth",
                           *fp32).max_sequence_length
    kwargs = dict(num_inference_steps=2, height=32, width=32,
                  output_type="np",
                  guidance_scale=3.5 if variant == "dev" else 0.0)

    def draw():
        return pipe(prompt, generator=torch.Generator().manual_seed(3),
                    max_sequence_length=length, **kwargs).images[0]

    base = draw()
    with torch.no_grad():
        base_pooled = pipe.encode_prompt(prompt,
                                         max_sequence_length=length)[1]
    for step in (1, 2):
        model = trained_model(config, work, f"iter_{step}.pth", *fp32)
        assert set(model.adapter_configs) == parts
        assert model.architecture == f"flux-1-{variant}"
        assert model.max_sequence_length == length
        trained = model.infer([prompt], seed=3, **kwargs)[0]
        pipe.unload_lora_weights()
        pipe.load_lora_weights(str(work / f"step{step}"))
        loaded = draw()
        assert abs(loaded - trained).max() <= 1e-5, step
        assert abs(loaded - base).max() > 1e-4, step
        # CLIP-L's pooled output, the loaded adapter's and the model's
        with torch.no_grad():
            pooled = pipe.encode_prompt(prompt,
                                        max_sequence_length=length)[1]
            ours = model.encode_text([prompt])[1]
        assert (pooled - ours).abs().max() <= 1e-5, step
        moved = (pooled - base_pooled).abs().max() > 1e-4
        assert moved == ("text_encoder" in parts), step


def test_a_side_the_patches_cannot_pack_names_the_size_and_the_fix(
        tmp_path, tiny_flux, flux_stripes):
    # 40 px: latents of 5 × 5, which no 2 × 2 patch covers
    options = shrink(tiny_flux, flux_stripes, tmp_path / "work",
                     "train_dataloader.dataset.pipeline.0.size=40",
                     "train_dataloader.dataset.pipeline.1.size=40")
    code, line = mim_error(DEV, tmp_path, *options)
    assert code == 1
    assert line == (
        "diffengine: error: images of 40×40 px do not pack into Flux's 2×2 "
        "patches of latents: give image sides that are multiples of 16 "
        "(e.g. RandomCrop's size=32, or BucketResizeCrop's "
        "bucket_reso_steps=64).")
    assert not list((tmp_path / "work").glob("*.pth"))


def test_lora_on_t5_is_refused_in_one_line(tmp_path, tiny_flux, flux_stripes):
    code, line = mim_error(DEV, tmp_path,
                           *shrink(tiny_flux, flux_stripes, tmp_path / "work"),
                           "model.text_encoder_2_lora_config.r=4",
                           "model.text_encoder_2_lora_config.target_modules="
                           "[q,k,v,o]")
    assert code == 1
    assert line == (
        "diffengine: error: text_encoder_2_lora_config is set, but Flux "
        "adapts no T5 (text_encoder_2): drop it; CLIP-L's adapter is "
        "text_encoder_lora_config.")
    assert not list((tmp_path / "work").glob("*.pth"))
