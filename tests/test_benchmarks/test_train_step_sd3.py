"""The benchmark harness on SD3: both sides train the same transformer LoRA
with the same prompts, and the CLI builds the tiny model by name."""
import json

import pytest
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from peft import LoraConfig

from benchmarks.framework_loop import SD3_CONFIG, framework_config
from benchmarks.plain_loop import (
    SD3_TARGETS,
    ImageFolder,
    encode_sd3_prompt,
    run_plain,
)
from benchmarks.train_step import main
from diffengine.models import StableDiffusion3

WORK = dict(resolution=32, batch_size=2, rank=2, steps=2, warmup=1)


@pytest.mark.parametrize("use_t5", [True, False])
def test_plain_loop_encodes_prompts_as_the_pipeline(tiny_sd3, shapes_data,
                                                    use_t5):
    options = {} if use_t5 else dict(text_encoder_3=None, tokenizer_3=None)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3, **options)
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    max_lengths = [77, 77]
    if use_t5:
        tokenizers.append(pipe.tokenizer_3)
        encoders.append(pipe.text_encoder_3)
        max_lengths.append(40)
    dataset = ImageFolder(shapes_data, 32, tokenizers, max_lengths)
    with torch.no_grad():
        embeds, pooled = encode_sd3_prompt(
            encoders, [ids[None] for ids in dataset[0]["input_ids"]], 40,
            pipe.transformer.config.joint_attention_dim, torch.device("cpu"))
        expected, _, expected_pooled, _ = pipe.encode_prompt(
            dataset.rows[0]["text"], None, None, max_sequence_length=40,
            do_classifier_free_guidance=False)
    assert embeds.shape == (1, 77 + 40, 64)
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=0)
    assert embeds[:, 77:].abs().sum() > 0 if use_t5 else not embeds[:, 77:].any()


def test_framework_config_is_diffusers_sd3_work(tiny_sd3, shapes_data,
                                                tmp_path):
    cfg = framework_config(**WORK, model=tiny_sd3, data=shapes_data,
                           work_dir=str(tmp_path), use_t5=False,
                           max_sequence_length=40)
    assert cfg.filename == SD3_CONFIG
    assert cfg.model.type == "StableDiffusion3"
    lora = cfg.model.transformer_lora_config
    assert (lora.r, lora.lora_alpha) == (2, 2)
    assert cfg.model.timesteps_generator == dict(type="LogitNormalTimeSteps")
    assert cfg.model.use_t5 is False and cfg.model.max_sequence_length == 40
    assert [t.get("size") for t in cfg.train_dataloader.dataset.pipeline][:2] \
        == [32, 32]
    assert cfg.optim_wrapper.type == "OptimWrapper"  # fp32 without CUDA
    assert cfg.custom_hooks == []
    # the framework's adapter is the plain loop's, parameter for parameter
    model = StableDiffusion3(tiny_sd3, use_t5=False,
                             transformer_lora_config=dict(lora))
    transformer = SD3Transformer2DModel.from_pretrained(
        tiny_sd3, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2,
                                       target_modules=SD3_TARGETS))
    assert lora_shapes(model.transformer) == lora_shapes(transformer)


def lora_shapes(module: torch.nn.Module) -> dict:
    return {n: p.shape for n, p in module.named_parameters() if "lora_" in n}


def test_plain_sd3_side_trains_the_transformer_lora(tiny_sd3, shapes_data):
    result = run_plain(**WORK, model=tiny_sd3, data=shapes_data,
                       use_t5=False)
    assert len(result["step_times"]) == len(result["cpu_times"]) == 2
    assert result["samples_per_s"] == pytest.approx(2 / result["median_s"])


def test_cli_builds_tiny_sd3_and_prints_both_sides(shapes_data, tmp_path,
                                                   capsys):
    out = tmp_path / "result.json"
    assert main(["--model", "tiny-sd3", "--build-dir", str(tmp_path),
                 "--data", shapes_data, "--resolution", "32", "--steps",
                 "1", "--warmup", "1", "--repeats", "1", "--threads", "1",
                 "--max-sequence-length", "40", "--json", str(out)]) == 0
    assert (tmp_path / "tiny-sd35" / "transformer").is_dir()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["plain", "framework"]
    report = json.loads(out.read_text())
    assert report["settings"]["use_t5"] is True
    assert report["settings"]["max_sequence_length"] == 40
    assert all(r["runs"][0]["step_times"]
               for r in report["results"].values())
