"""The benchmark harness on FLUX.1: both sides train the same transformer
LoRA with the same prompts, σ and guidance, and the CLI builds the tiny
model by name."""
import json
import math

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from peft import LoraConfig

from benchmarks.framework_loop import FLUX_CONFIG, framework_config
from benchmarks.plain_loop import (
    SD3_TARGETS,
    ImageFolder,
    encode_flux_prompt,
    is_flux_folder,
    run_plain,
    shift_flux_sigmas,
)
from benchmarks.train_step import BUILDERS, main, parse_args, prepare_inputs
from diffengine.models import Flux
from diffengine.models.schedules import FlowMatchSchedule

WORK = dict(resolution=32, batch_size=2, rank=2, steps=2, warmup=1,
            max_sequence_length=40)


def test_plain_loop_encodes_prompts_as_the_pipeline(tiny_flux, shapes_data):
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    assert is_flux_folder(tiny_flux)
    dataset = ImageFolder(shapes_data, 32, [pipe.tokenizer, pipe.tokenizer_2],
                          [77, 40])
    with torch.no_grad():
        embeds, pooled = encode_flux_prompt(
            [pipe.text_encoder, pipe.text_encoder_2],
            [ids[None] for ids in dataset[0]["input_ids"]],
            torch.device("cpu"))
        expected, expected_pooled, _ = pipe.encode_prompt(
            dataset.rows[0]["text"], None, max_sequence_length=40)
    assert embeds.shape == (1, 40, 64)
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=0)


def test_plain_loop_shifts_sigma_as_the_framework(tiny_flux,
                                                  tiny_flux_schnell):
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    latents = torch.zeros(1, 16, 32, 32)  # 256 patches of 2×2
    for model in (tiny_flux, tiny_flux_schnell):
        schedule = FlowMatchSchedule(
            scheduler=FluxPipeline.from_pretrained(model).scheduler)
        config = dict(schedule.scheduler.config)
        torch.testing.assert_close(
            shift_flux_sigmas(sigmas, config, 256),
            schedule.shifted(sigmas, latents))
    # [dev] at 256 patches: mu = base_shift = 0.5
    dev = dict(FluxPipeline.from_pretrained(tiny_flux).scheduler.config)
    torch.testing.assert_close(
        shift_flux_sigmas(sigmas, dev, 256),
        math.exp(0.5) / (math.exp(0.5) + 1 / sigmas - 1))


def test_framework_config_is_the_plain_loops_flux_work(tiny_flux,
                                                       shapes_data, tmp_path):
    cfg = framework_config(**WORK, model=tiny_flux, data=shapes_data,
                           work_dir=str(tmp_path))
    assert cfg.filename == FLUX_CONFIG
    assert cfg.model.type == "Flux"
    lora = cfg.model.transformer_lora_config
    assert (lora.r, lora.lora_alpha) == (2, 2)
    assert cfg.model.timesteps_generator == dict(type="LogitNormalTimeSteps")
    assert cfg.model.max_sequence_length == 40
    # float32 and no recomputation, as the plain loop runs on a CPU
    assert cfg.model.weight_dtype is None
    assert cfg.model.gradient_checkpointing is False
    assert [t.get("size") for t in cfg.train_dataloader.dataset.pipeline][:2] \
        == [32, 32]
    assert cfg.custom_hooks == []
    bf16 = framework_config(**WORK, model=tiny_flux, data=shapes_data,
                            work_dir=str(tmp_path), mixed_precision="bf16")
    assert bf16.model.weight_dtype == "bfloat16"
    # the framework's adapter is the plain loop's, parameter for parameter
    model = Flux(tiny_flux, transformer_lora_config=dict(lora))
    assert model.guidance_scale == 1.0  # the plain loop's guidance
    transformer = FluxTransformer2DModel.from_pretrained(
        tiny_flux, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2,
                                       target_modules=SD3_TARGETS))
    assert lora_shapes(model.transformer) == lora_shapes(transformer)


def lora_shapes(module: torch.nn.Module) -> dict:
    return {n: p.shape for n, p in module.named_parameters() if "lora_" in n}


def test_plain_flux_side_trains_the_transformer_lora(tiny_flux, shapes_data):
    result = run_plain(**WORK, model=tiny_flux, data=shapes_data)
    assert len(result["step_times"]) == len(result["cpu_times"]) == 2
    assert result["samples_per_s"] == pytest.approx(2 / result["median_s"])
    with pytest.raises(ValueError, match="T5"):
        run_plain(**WORK, model=tiny_flux, data=shapes_data, use_t5=False)


def test_cli_builds_tiny_flux_and_prints_both_sides(shapes_data, tmp_path,
                                                    capsys):
    out = tmp_path / "result.json"
    assert main(["--model", "tiny-flux", "--build-dir", str(tmp_path),
                 "--data", shapes_data, "--resolution", "32", "--steps",
                 "1", "--warmup", "1", "--repeats", "1", "--threads", "1",
                 "--max-sequence-length", "40", "--json", str(out)]) == 0
    assert (tmp_path / "tiny-flux-dev" / "transformer").is_dir()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["plain", "framework"]
    report = json.loads(out.read_text())
    assert report["settings"]["max_sequence_length"] == 40
    assert all(r["runs"][0]["step_times"]
               for r in report["results"].values())


def test_builders_may_live_outside_the_demo_module(monkeypatch, tmp_path,
                                                   shapes_data):
    # --model flux-slice builds with benchmarks.flux_shaped.make_flux_slice
    assert BUILDERS["flux-slice"][1] == "benchmarks.flux_shaped.make_flux_slice"
    monkeypatch.setitem(BUILDERS, "dotted", (
        "tiny-flux-dotted", "diffengine.demo.make_tiny_flux"))
    args = parse_args(["--model", "dotted", "--data", shapes_data,
                       "--build-dir", str(tmp_path)])
    model, _ = prepare_inputs(args)
    assert is_flux_folder(model) and model.endswith("tiny-flux-dotted")
