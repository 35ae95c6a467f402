"""generate / make_grid / load_pipeline: the images of training and demo."""
import numpy as np
import pytest
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from diffengine.inference import (
    denoiser_of,
    generate,
    label_height,
    load_pipeline,
    make_grid,
    panel_box,
    prompt_slug,
)
from tests.conftest import SAMPLE

SETTINGS = dict(num_inference_steps=2, output_type="np")


def test_an_image_depends_on_its_seed_only(tiny_sd):
    pipe = load_pipeline(tiny_sd)
    batch = generate(pipe, "a red circle", [3, 5], **SETTINGS)
    alone = generate(pipe, "a red circle", [5], **SETTINGS)[0]
    assert np.abs(batch[1] - alone).max() <= 1e-5
    assert np.abs(batch[0] - batch[1]).max() > 1e-2
    with pytest.raises(ValueError, match="seeds is empty"):
        generate(pipe, "a red circle", [])


def test_lora_scale(lora_step, tiny_sd):
    settings = {k: v for k, v in SAMPLE.items() if k not in ("prompt", "seed")}

    def image(scale):
        pipe = load_pipeline(tiny_sd, lora_step.step_dir, lora_scale=scale)
        return generate(pipe, SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]

    base = generate(load_pipeline(tiny_sd), SAMPLE["prompt"], [SAMPLE["seed"]],
                    **settings)[0]
    assert np.abs(image(1.0) - lora_step.reference).max() <= 1e-5
    assert np.abs(image(0.0) - base).max() <= 1e-5
    half = image(0.5)
    assert np.abs(half - base).max() > 1e-3
    assert np.abs(half - lora_step.reference).max() > 1e-3


def test_make_grid_places_images_row_by_row():
    images = [np.full((2, 3, 3), i, dtype=np.uint8) for i in range(5)]
    grid = make_grid(images, columns=2)
    assert grid.shape == (6, 6, 3) and grid.dtype == np.uint8
    assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 1
    assert grid[2, 0, 0] == 2 and grid[4, 0, 0] == 4
    assert (grid[4:, 3:] == 0).all()  # the empty cell
    with pytest.raises(ValueError, match="columns=0"):
        make_grid(images, columns=0)


def test_make_grid_labels_rows_and_columns_beside_untouched_images():
    images = [np.full((40, 50, 3), 10 * (i + 1), dtype=np.uint8)
              for i in range(4)]
    grid = make_grid(images, columns=2, row_labels=["a red circle", "a " * 40],
                     column_labels=["seed 0", "seed 1"])
    band = label_height(50)
    assert grid.shape == (band + 2 * (band + 40), 100, 3)
    for i, image in enumerate(images):
        y, x = panel_box(*divmod(i, 2), 40, 50)
        assert np.array_equal(grid[y:y + 40, x:x + 50], image)
    # dark text on white: the seeds' band, then each prompt's band
    for top in (0, band, 2 * band + 40):
        strip = grid[top:top + band]
        assert (strip == 255).any() and (strip < 128).any(), top


def test_prompt_slug_names_files_safely():
    assert prompt_slug(["a red circle", "A blue/square!"]) == (
        "a-red-circle+a-blue-square")
    assert prompt_slug(["yoda pokemon", "yoda pokemon"]) == "yoda-pokemon"
    assert prompt_slug(["?!"]) == "prompt"
    assert len(prompt_slug(["x" * 200])) == 80


def test_the_denoiser_of_a_pipeline(tiny_sd):
    """``unet`` in SD 1.x and SDXL pipelines, ``transformer`` in SD3's."""
    pipe = load_pipeline(tiny_sd)
    assert denoiser_of(pipe) is pipe.unet
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4,
        num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16,
        pooled_projection_dim=16, pos_embed_max_size=16)
    sd3 = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    assert denoiser_of(sd3) is transformer
    pipe.unet = None
    with pytest.raises(ValueError, match="has neither a transformer nor a "
                       "unet"):
        denoiser_of(pipe)


def test_each_family_samples_with_its_own_defaults():
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from diffengine.inference import generation_defaults

    def steps_and_guidance(pipeline_class):
        options = generation_defaults(pipeline_class)
        return options.num_inference_steps, options.guidance_scale

    assert steps_and_guidance(StableDiffusionPipeline) == (50, 7.5)
    assert steps_and_guidance(StableDiffusionXLPipeline) == (50, 7.5)
    # StableDiffusion3Pipeline's own defaults
    assert steps_and_guidance(StableDiffusion3Pipeline) == (28, 7.0)


def count_denoiser_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("use_t5", [True, False])
def test_sd3_infers_with_28_steps_at_guidance_7_unless_told(tiny_sd3, use_t5):
    from diffengine.models.editors import StableDiffusion3
    from tests.conftest import SD3_TARGETS, perturb_lora
    model = StableDiffusion3(tiny_sd3, use_t5=use_t5, transformer_lora_config=dict(
        r=4, target_modules=SD3_TARGETS))
    perturb_lora(model)
    calls, handle = count_denoiser_calls(model.transformer)
    image = model.infer(["a red circle"], height=32, width=32,
                        output_type="np")[0]
    handle.remove()
    assert len(calls) == 28  # guidance batches both halves in one call
    model.eval()  # as infer() runs it: no dropout in T5
    pipe = model.pipeline()
    assert (pipe.text_encoder_3 is None) == (not use_t5)
    told = generate(pipe, "a red circle", [0], height=32, width=32,
                    num_inference_steps=28, guidance_scale=7.0,
                    output_type="np")[0]
    assert np.array_equal(image, told)
    other = model.infer(["a red circle"], height=32, width=32,
                        num_inference_steps=2, guidance_scale=7.0,
                        output_type="np")[0]
    assert not np.array_equal(image, other)


def test_sd15_infers_with_50_steps_at_guidance_7_5_as_before(lora_step):
    model = lora_step.model
    calls, handle = count_denoiser_calls(model.unet)
    image = model.infer(["a red circle"], height=32, width=32,
                        output_type="np")[0]
    handle.remove()
    assert len(calls) == 50 + 1  # PNDM (the tiny SD's) takes a step more
    model.eval()
    told = generate(model.pipeline(), "a red circle", [0], height=32,
                    width=32, num_inference_steps=50, guidance_scale=7.5,
                    output_type="np")[0]
    assert np.array_equal(image, told)
