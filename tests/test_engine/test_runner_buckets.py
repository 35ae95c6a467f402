"""Aspect-ratio buckets keep the promises: 2 processes × batch 2 train what
1 × batch 4 does, a kill at a random step then a resume ends bit-identical
(with both caches on; SD3.5 and FLUX.1 too, at sides of 16, T5 freed
after caching), and the step folders load
in diffusers."""
import os
import random
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline

from tests.conftest import REPO
from tests.test_engine.test_runner import (
    TRAIN,
    assert_identical,
    lora_weights,
    run_until_checkpoint,
)
from tests.test_tools.test_train import trained_model

CONFIG = os.path.join(REPO, "configs", "aspect_ratio_buckets",
                      "stable_diffusion_v15_lora_buckets_imagefolder.py")
MIM = os.path.join(os.path.dirname(sys.executable), "mim")
# ``orientation_data`` at 48² px: buckets of 3, 2, 2 and 3 images.
BUCKETS = [
    "train_dataloader.dataset.pipeline.0.resolution=48",
    "train_dataloader.dataset.pipeline.0.min_bucket_reso=16",
    "train_dataloader.dataset.pipeline.0.max_bucket_reso=96",
    "train_dataloader.dataset.pipeline.0.bucket_reso_steps=8",
]
TABLE = """\
  width  height  aspect  images  batches  padding
     24      80    0.30       3        1        1
     48      48    1.00       2        1        2
     56      40    1.40       2        1        2
     80      24    3.33       3        1        1"""


def options(tiny_sd, data, work_dir, *extra):
    return [f"model.model={tiny_sd}", f"train_dataloader.dataset.dataset={data}",
            f"work_dir={work_dir}", "train_dataloader.num_workers=0",
            "optim_wrapper.optimizer.lr=1e-3", "custom_hooks=[]",
            "randomness.seed=0",
            *BUCKETS, *extra]


def test_two_processes_match_one_and_the_steps_load_in_diffusers(
        tmp_path, tiny_sd, orientation_data):
    common = ["train_cfg.max_epochs=2",
              "train_dataloader.dataset.pipeline.0.random_crop=True"]
    logs = {}
    for name, launch, batch in (
            ("two", ["--gpus", "2", "--launcher", "pytorch"], 2),
            ("one", [], 4)):
        result = subprocess.run(
            [MIM, "train", "diffengine", CONFIG, *launch, "--cfg-options",
             *options(tiny_sd, orientation_data, tmp_path / name, *common),
             f"train_dataloader.batch_size={batch}"],
            capture_output=True, text=True, timeout=600)
        logs[name] = result.stdout + result.stderr
        assert result.returncode == 0, logs[name][-3000:]
    # batches of 4 either way, one bucket each: 4 iterations an epoch
    assert "10 images, batches of 4 (2 × 2 processes), 4 an epoch" in logs[
        "two"]
    assert "10 images, batches of 4 (4 × 1 process), 4 an epoch" in logs["one"]
    assert TABLE in logs["one"] and TABLE in logs["two"]
    two, _ = lora_weights(tmp_path / "two", "step8")
    one, _ = lora_weights(tmp_path / "one", "step8")
    assert two.keys() == one.keys()
    difference = max((two[k] - one[k]).abs().max().item() for k in one)
    print(f"buckets, 2 processes × 2 vs 1 × 4: {difference:.2e}")
    assert difference <= 1e-5
    earlier, _ = lora_weights(tmp_path / "one", "step4")
    assert max((one[k] - earlier[k]).abs().max().item() for k in one) > 1e-4

    model = trained_model(CONFIG, tmp_path / "one", "epoch_2.pth",
                          f"model.model={tiny_sd}")
    kwargs = dict(num_inference_steps=3, output_type="np")
    trained = model.infer(["a framed picture 1"], seed=3, **kwargs)[0]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd,
                                                   safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path / "one" / "step8"))
    loaded = pipe("a framed picture 1",
                  generator=torch.Generator().manual_seed(3),
                  **kwargs).images[0]
    assert abs(loaded - trained).max() <= 1e-5


# Checkpoints at every iteration, both caches on.
CACHED_SCHEDULE = ["train_cfg.max_epochs=2", "train_dataloader.batch_size=2",
                   "default_hooks.checkpoint.by_epoch=False",
                   "default_hooks.checkpoint.interval=1",
                   "default_hooks.checkpoint.max_keep_ckpts=3",
                   "train_dataloader.dataset.cache_latents=True",
                   "model.cache_text_embeddings=True"]


def kill_and_resume_with_both_caches(tmp_path, command) -> tuple[str, int]:
    """Train straight with ``command(work_dir, *extra)``, then kill a second
    run at a random checkpoint and resume it: the resumed run reuses every
    cached latent and ends bit-identical. The straight run's log and last
    step."""
    straight = subprocess.run(command(tmp_path / "straight"),
                              capture_output=True, text=True, timeout=600)
    log = straight.stdout + straight.stderr
    assert straight.returncode == 0, log[-3000:]
    assert "cache_latents: 10 images encoded (2 views each)" in log
    last = max(int(p.name[4:]) for p in (tmp_path / "straight").glob("step*"))
    reference = lora_weights(tmp_path / "straight", f"step{last}")
    work = tmp_path / "killed"
    kill_at = random.Random(os.getpid()).randint(2, last - 2)
    process = run_until_checkpoint(command(work), work, kill_at)
    process.kill()
    process.wait()
    result = subprocess.run(command(work, "--resume"), capture_output=True,
                            text=True, timeout=600)
    resumed = result.stdout + result.stderr
    assert result.returncode == 0, resumed[-3000:]
    assert "resumed from" in resumed
    assert "0 images encoded (2 views each), 10 reused" in resumed
    assert_identical(work, reference, f"step{last}")
    return log, last


def test_kill_then_resume_with_both_caches_is_bit_exact(tmp_path, tiny_sd,
                                                        orientation_data):
    # batch 2: 6 batches an epoch (two of them padded), 2 epochs

    def command(work_dir, *extra):
        return [sys.executable, TRAIN, CONFIG, *extra, "--cfg-options",
                *options(tiny_sd, orientation_data, work_dir,
                         *CACHED_SCHEDULE)]

    _, last = kill_and_resume_with_both_caches(tmp_path, command)
    assert last == 12


# SD3.5 Medium's or FLUX.1 [dev]'s seed config in buckets of sides of 16.
FAMILY_BUCKETS = """
_base_ = [{seed_config!r}]
train_pipeline = [
    dict(type="BucketResizeCrop", resolution=48, min_bucket_reso=16,
         max_bucket_reso=96, bucket_reso_steps=16),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(
    dataset=dict(caption_column="text", pipeline=train_pipeline),
    batch_sampler=dict(type="AspectRatioBatchSampler", drop_last=False))
"""
SEED_CONFIGS = {
    "sd3": ("tiny_sd3", os.path.join(
        REPO, "configs", "stable_diffusion_3_lora",
        "stable_diffusion_3_5_medium_lora_pokemon_blip.py")),
    "flux": ("tiny_flux", os.path.join(
        REPO, "configs", "flux_lora", "flux_dev_lora_pokemon_blip.py")),
}


def bucket_sides(log: str) -> list[tuple[int, int]]:
    """(width, height) of each row of the bucket table of a training log."""
    lines = log[log.index("  width  height"):].splitlines()[1:]
    rows = []
    for line in lines:
        cells = line.split()
        if len(cells) != 6 or not cells[0].isdigit():
            break
        rows.append((int(cells[0]), int(cells[1])))
    return rows


@pytest.mark.parametrize("family", list(SEED_CONFIGS))
def test_buckets_of_16_with_both_caches_kill_then_resume_is_bit_exact(
        family, request, tmp_path, orientation_data):
    fixture, seed_config = SEED_CONFIGS[family]
    tiny = request.getfixturevalue(fixture)
    config = tmp_path / f"{family}_buckets.py"
    config.write_text(FAMILY_BUCKETS.format(seed_config=seed_config))
    # T5 freed once every caption is cached
    schedule = [*CACHED_SCHEDULE, "model.max_sequence_length=16",
                "model.drop_text_encoders_after_caching=True"]

    def command(work_dir, *extra):
        return [sys.executable, TRAIN, str(config), *extra, "--cfg-options",
                f"model.model={tiny}",
                f"train_dataloader.dataset.dataset={orientation_data}",
                f"work_dir={work_dir}", "train_dataloader.num_workers=0",
                "custom_hooks=[]", "randomness.seed=0", *schedule]

    log, _ = kill_and_resume_with_both_caches(tmp_path, command)
    encoders = ("text_encoder, text_encoder_2, text_encoder_3"
                if family == "sd3" else "text_encoder, text_encoder_2")
    assert f"; {encoders} freed (drop_text_encoders_after_caching)" in log
    sides = bucket_sides(log)
    assert len(sides) > 1  # portraits, landscapes and squares apart
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in sides), sides
