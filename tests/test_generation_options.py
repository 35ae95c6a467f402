"""GenerationOptions: the names it takes, its one merge, the pipeline call
it makes and the options a step file records."""
import json

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import save_file

from diffengine.adapter_file import TRAINING_METADATA_PREFIX
from diffengine.generation import (
    GenerationOptions,
    recorded_generation_options,
)
from diffengine.inference import generation_defaults
from diffengine.models import Flux


def test_of_takes_the_hooks_and_infers_names():
    options = GenerationOptions.of(seed=3, num_inference_steps=2,
                                   negative_prompt="blurry",
                                   max_sequence_length=77)
    assert options.seeds == (3, )
    assert options.num_inference_steps == 2
    assert options.negative_prompt == "blurry"
    assert options.guidance_scale is None
    # any other name is an argument of the pipeline's call
    assert options.pipeline_arguments == {"max_sequence_length": 77}
    assert GenerationOptions.of(seed=[4, 5]).seeds == (4, 5)
    assert GenerationOptions.of(seed=[]).seeds == ()
    assert GenerationOptions.of().seeds is None


def test_a_layer_gives_only_what_it_sets():
    defaults = GenerationOptions(num_inference_steps=28, guidance_scale=3.5,
                                 seeds=(0, ),
                                 pipeline_arguments={"max_sequence_length":
                                                     512})
    recorded = GenerationOptions(num_inference_steps=4, height=32,
                                 seeds=(4, 5))
    told = GenerationOptions(guidance_scale=0.0, seeds=(7, ),
                             pipeline_arguments={"max_sequence_length":
                                                 256})
    merged = defaults.overridden_by(recorded).overridden_by(told)
    assert merged == GenerationOptions(
        num_inference_steps=4, guidance_scale=0.0, height=32, seeds=(7, ),
        pipeline_arguments={"max_sequence_length": 256})
    assert defaults.overridden_by(None) is defaults
    # the layers themselves stay as they were
    assert defaults.num_inference_steps == 28 and recorded.seeds == (4, 5)


def test_call_arguments_seed_one_cpu_generator_per_image():
    arguments = GenerationOptions(num_inference_steps=2, seeds=(3, 5),
                                  pipeline_arguments={"max_sequence_length":
                                                      77}).call_arguments()
    assert arguments["num_images_per_prompt"] == 2
    assert arguments["max_sequence_length"] == 77
    assert arguments["num_inference_steps"] == 2
    first, second = arguments["generator"]
    assert first.device.type == second.device.type == "cpu"
    assert torch.equal(torch.rand(4, generator=first),
                       torch.rand(4, generator=torch.Generator()
                                  .manual_seed(3)))
    # no seeds given: one image of seed 0
    assert GenerationOptions().call_arguments()["num_images_per_prompt"] == 1


def test_families_declare_their_defaults_once():
    sd3 = generation_defaults(StableDiffusion3Pipeline)
    assert (sd3.num_inference_steps, sd3.guidance_scale) == (28, 7.0)
    assert sd3.seeds == (0, )
    flux = generation_defaults(FluxPipeline)
    assert flux == Flux.generation_defaults_for(None)
    assert flux.pipeline_arguments == {"max_sequence_length": 512}
    schnell = Flux.generation_defaults_for({"guidance_embeds": False})
    assert (schnell.num_inference_steps, schnell.guidance_scale) == (4, 0.0)
    assert schnell.pipeline_arguments == {"max_sequence_length": 256}


def write_step_file(path, hooks):
    metadata = {} if hooks is None else {
        TRAINING_METADATA_PREFIX + "training_config": json.dumps(
            dict(custom_hooks=hooks))}
    save_file({"x": torch.zeros(1)}, str(path), metadata=metadata)
    return str(path)


@pytest.mark.parametrize("seed, seeds", [(4, (4, )), ([4, 5], (4, 5))])
def test_recorded_options_are_the_sample_hooks(tmp_path, seed, seeds):
    hook = dict(type="VisualizationHook", prompt=["x"], interval=5,
                seed=seed, num_inference_steps=2, guidance_scale=3.0,
                height=32, width=48, negative_prompt="blurry")
    path = write_step_file(tmp_path / "step.safetensors",
                           [dict(type="EMAHook"), hook])
    assert recorded_generation_options(path) == GenerationOptions(
        num_inference_steps=2, guidance_scale=3.0, height=32, width=48,
        negative_prompt="blurry", seeds=seeds)


def test_recorded_options_of_a_file_without_a_hook_are_none(tmp_path):
    assert recorded_generation_options(write_step_file(
        tmp_path / "bare.safetensors", None)) == GenerationOptions()
    # a hook that left everything to its defaults
    assert recorded_generation_options(write_step_file(
        tmp_path / "hook.safetensors",
        [dict(type="VisualizationHook", prompt=["x"])])) == (
            GenerationOptions())
