"""Every training technique on at once keeps the promises, for SD 1.x,
SDXL, SD3.5 and FLUX.1 [dev] and [schnell] (under flow matching), and
FLUX.1 [dev] and SD3.5 on an int8 and a float8 quantized base: 2
processes × batch 4 train the weights of 1 × batch 8, and a kill at a
random step then a resume ends bit-identical; with both caches and a
half-precision base too."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from diffengine.engine import fall_back_from_amp_without_cuda
from diffengine.registry import RUNNERS
from tests.conftest import REPO
from tests.test_engine.test_runner import (
    DEMO,
    TRAIN,
    assert_identical,
    lora_weights,
    run_until_checkpoint,
)

# On the tiny demo's config, or for SDXL and SD3.5 on their seed configs set
# as the demo is but at the seed config's rate (1e-4): at the demo's 1e-3,
# Adam turns the tiny SDXL's fp32 rounding in near-zero gradients into 1e-4
# differences between batch splits, which vanish in fp64. SD3.5's and
# Flux's T5 read 32 tokens instead of 256 and 512, for speed.
BASES = {
    "sd": ("_base_ = [{demo!r}]", ""),
    "sdxl": ("""
_base_ = [{sdxl!r}]
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=10))
""", "batch_size=4, num_workers=0, "),
    "sd3": ("""
_base_ = [{sd3!r}]
model = dict(max_sequence_length=32)
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=10))
""", "batch_size=4, num_workers=0, "),
    "flux": ("""
_base_ = [{flux!r}]
model = dict(max_sequence_length=32)
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=10))
""", "batch_size=4, num_workers=0, "),
    # no guidance input, no shift
    "flux-schnell": ("""
_base_ = [{schnell!r}]
model = dict(max_sequence_length=32)
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=10))
""", "batch_size=4, num_workers=0, "),
    # a quantized frozen base (diffengine.models.utils.quantization)
    "flux-int8": ("""
_base_ = [{flux!r}]
model = dict(max_sequence_length=32,
             quantization=dict(backend="torchao", weights="int8"))
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=10))
""", "batch_size=4, num_workers=0, "),
    "sd3-float8": ("""
_base_ = [{sd3!r}]
model = dict(max_sequence_length=32,
             quantization=dict(backend="quanto", weights="float8"))
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=10))
""", "batch_size=4, num_workers=0, "),
}
# SDXL's size conditioning: no such input in SD3 and Flux.
TIME_IDS = {"sd": '    dict(type="ComputeTimeIds"),\n',
            "sdxl": '    dict(type="ComputeTimeIds"),\n', "sd3": "",
            "flux": "", "flux-schnell": "", "flux-int8": "",
            "sd3-float8": ""}
EVERYTHING_ON = """
model = dict(
    loss=dict(type="SNRL2Loss", snr_gamma=5.0),
    noise_generator=dict(type="PyramidNoise", discount=0.9),
    timesteps_generator=dict(type="LogitNormalTimeSteps"),
    input_perturbation_gamma=0.1,
)
train_pipeline = [
    dict(type="ResizeShortestEdge", size=64),
    dict(type="RandomCrop", size=48),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="RandomTextDrop", p=0.2),
    dict(type="ShuffleCaptionTags", keep_tokens=1),
{time_ids}    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
# all 24 images, no validation split (the demo config holds some out)
train_dataloader = dict({loader}dataset=dict(
    caption_column="text", pipeline=train_pipeline, validation_fraction=0))
val_dataloader = None
val_cfg = None
val_evaluator = None
custom_hooks = [dict(type="LoRAEMAHook", momentum=0.2)]
"""
SDXL = os.path.join(REPO, "configs", "stable_diffusion_xl_lora",
                    "stable_diffusion_xl_lora_pokemon_blip.py")
SD3 = os.path.join(REPO, "configs", "stable_diffusion_3_lora",
                   "stable_diffusion_3_5_medium_lora_pokemon_blip.py")
FLUX = os.path.join(REPO, "configs", "flux_lora",
                    "flux_dev_lora_pokemon_blip.py")
SCHNELL = os.path.join(REPO, "configs", "flux_lora",
                       "flux_schnell_lora_pokemon_blip.py")
# 24 images, batch 4: 6 iterations an epoch, 3 epochs, a checkpoint each.
SCHEDULE = [
    "train_cfg.max_epochs=3",
    "default_hooks.checkpoint.by_epoch=False",
    "default_hooks.checkpoint.interval=1",
    "default_hooks.checkpoint.max_keep_ckpts=3",
]


@pytest.fixture(scope="module", params=list(BASES))
def everything(request, tmp_path_factory, tiny_sd, tiny_sdxl, tiny_sd3,
               tiny_flux, tiny_flux_schnell, shapes_data):
    """The config and its tiny model, and the shapes with tag captions
    ("red, circle, white background") for the shuffle to shuffle."""
    root = tmp_path_factory.mktemp(f"everything-{request.param}")
    data = root / "tags"
    data.mkdir()
    rows = []
    with open(os.path.join(shapes_data, "metadata.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            os.link(os.path.join(shapes_data, row["file_name"]),
                    data / row["file_name"])
            words = row["text"].split()  # a red circle on a white background
            row["text"] = f"{words[1]}, {words[2]}, {words[5]} background"
            rows.append(json.dumps(row))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    config = root / "everything_on.py"
    base, loader = BASES[request.param]
    config.write_text(base.format(demo=DEMO, sdxl=SDXL, sd3=SD3, flux=FLUX,
                                  schnell=SCHNELL)
                      + EVERYTHING_ON.format(
                          loader=loader, time_ids=TIME_IDS[request.param]))
    tiny = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3,
            "flux": tiny_flux, "flux-schnell": tiny_flux_schnell,
            "flux-int8": tiny_flux, "sd3-float8": tiny_sd3}[request.param]
    return str(config), str(data), tiny


def command(config, tiny, data, work_dir, *extra):
    return [sys.executable, TRAIN, config, "--cfg-options",
            f"model.model={tiny}", f"train_dataloader.dataset.dataset={data}",
            f"work_dir={work_dir}", *SCHEDULE, *extra]


def test_kill_at_a_random_step_then_resume_is_bit_exact(tmp_path, everything):
    config, data, tiny_sd = everything
    subprocess.run(command(config, tiny_sd, data, tmp_path / "straight"),
                   check=True, capture_output=True)
    reference = lora_weights(tmp_path / "straight")
    work = tmp_path / "killed"
    kill_at = random.Random(os.getpid()).randint(2, 16)
    process = run_until_checkpoint(command(config, tiny_sd, data, work),
                                   work, kill_at)
    process.kill()
    process.wait()
    result = subprocess.run([*command(config, tiny_sd, data, work), "--resume"],
                            capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    print(f"killed at the checkpoint of iteration {kill_at}, resumed: "
          "comparing every step file with the uninterrupted run's")
    assert_identical(work, reference)


def test_two_processes_match_one_with_the_double_batch(tmp_path, everything):
    config, data, tiny_sd = everything
    mim = os.path.join(os.path.dirname(sys.executable), "mim")
    common = [f"model.model={tiny_sd}", f"train_dataloader.dataset.dataset={data}",
              "train_cfg.max_epochs=2", "default_hooks.checkpoint.interval=1"]
    for name, extra, batch in (("two", ["--gpus", "2", "--launcher", "pytorch"],
                                4), ("one", [], 8)):
        result = subprocess.run(
            [mim, "train", "diffengine", config, *extra, "--cfg-options",
             *common, f"work_dir={tmp_path / name}",
             f"train_dataloader.batch_size={batch}"],
            capture_output=True, text=True)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    two, _ = lora_weights(tmp_path / "two", "step6")
    one, _ = lora_weights(tmp_path / "one", "step6")
    assert two.keys() == one.keys()
    difference = max((two[k] - one[k]).abs().max().item() for k in one)
    print(f"2 processes × 4 vs 1 × 8, every technique on "
          f"({os.path.basename(tiny_sd)}): {difference:.2e}")
    assert difference <= 1e-5
    earlier, _ = lora_weights(tmp_path / "one", "step3")
    assert max((one[k] - earlier[k]).abs().max().item() for k in one) > 1e-4


@pytest.mark.parametrize("weight_dtype", ["bfloat16", "float16"])
def test_every_technique_with_both_caches_and_a_half_precision_base(
        tmp_path, everything, weight_dtype):
    config, data, tiny_sd = everything
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({
        "model.model": tiny_sd, "train_dataloader.dataset.dataset": data,
        "train_dataloader.dataset.cache_latents": True,
        "model.cache_text_embeddings": True,
        "model.weight_dtype": weight_dtype, "train_cfg.max_epochs": 2,
        "work_dir": str(tmp_path)})
    fall_back_from_amp_without_cuda(cfg)  # as tools/train.py does
    runner = RUNNERS.build(cfg)
    runner.train()
    model = runner.model
    # the caption transforms ran before the text cache: each distinct caption
    # (shuffled tags, the dropped one) is cached once
    cached = set(model.text_embeddings.embeddings)
    assert "" in cached
    tags = {frozenset(c.split(", ")[1:]) for c in cached if c}
    assert len(cached) > 24 and len(tags) < len(cached)
    assert all(c.split(", ")[0] in ("red", "green", "blue", "yellow", "purple",
                                    "orange") for c in cached if c)
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert torch.isfinite(torch.tensor(loss))
    step = lora_weights(tmp_path, "step12")[0]
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32
               for v in step.values())
