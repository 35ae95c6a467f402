"""SpeedLogProcessor: it/s, peak memory, a steady ETA, validation labels."""
import glob
import json
import os
import subprocess
import sys

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

import diffengine.engine  # noqa: F401  (registers the log processor)
from diffengine.engine.log_processor import (
    add_time_between_iterations,
    peak_ram_mb,
)
from tests.conftest import REPO, tiny_train_config

DEMO = os.path.join(REPO, "configs", "stable_diffusion_lora",
                    "tiny_sd_lora_demo.py")
TRAIN = os.path.join(REPO, "tools", "train.py")


def test_log_lines_show_speed_eta_and_peak_memory(tmp_path, tiny_sd,
                                                  shapes_data):
    runner = Runner.from_cfg(Config(tiny_train_config(
        tmp_path, tiny_sd, shapes_data,
        sampler=dict(type="DefaultSampler", shuffle=False),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(logger=dict(type="LoggerHook", interval=2),
                           checkpoint=None),
        log_processor=dict(type="SpeedLogProcessor", by_epoch=False),
    )))
    runner.train()
    log, = glob.glob(str(tmp_path / "*" / "*.log"))
    with open(log) as f:
        lines = [line for line in f if "Iter(train)" in line]
    assert len(lines) == 2
    for line in lines:
        for field in ("eta: ", "time: ", "it/s: ", "peak_ram: ", "loss: "):
            assert field in line, line
    scalars, = glob.glob(str(tmp_path / "*" / "vis_data" / "scalars.json"))
    with open(scalars) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert abs(row["it/s"] * row["time"] - 1) < 1e-3
        assert 0 < row["peak_ram"] <= peak_ram_mb()


def test_eta_counts_iterations_and_a_share_of_samples_not_their_pauses(
        tmp_path, tiny_sd, shapes_data):
    runner = Runner.from_cfg(Config(tiny_train_config(
        tmp_path, tiny_sd, shapes_data,
        train_cfg=dict(by_epoch=False, max_iters=100),
        log_processor=dict(type="SpeedLogProcessor", by_epoch=False),
    )))
    runner.train_loop._iter = 9  # the 10th iteration has just run
    hub = runner.message_hub
    # 0.5 s iterations; the one after the samples of step 5 waited 30 s
    for seconds in [0.5] * 5 + [30.5] + [0.5] * 4:
        hub.update_scalar("train/time", seconds)
    add_time_between_iterations(runner, 30.0)
    runner.log_processor._update_eta(runner)
    # 90 iterations of 0.5 s, and 3 s of samples per iteration so far:
    # mmengine's mean would say 90 × 3.5 s without the samples to come
    assert hub.get_info("eta") == pytest.approx(90 * (0.5 + 30.0 / 10))
    # more iterations at the same pace: the share of the samples shrinks,
    # the pause itself leaves the median
    for _ in range(10):
        hub.update_scalar("train/time", 0.5)
    runner.train_loop._iter = 19
    runner.log_processor._update_eta(runner)
    assert hub.get_info("eta") == pytest.approx(80 * (0.5 + 30.0 / 20))


def test_validation_by_iteration_is_labelled_by_it_once_per_evaluation(
        tmp_path):
    # the demo's data and base, with its held-out quarter for validation
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_demo.py")],
                   cwd=tmp_path, check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, TRAIN, DEMO, "--cfg-options", "work_dir=work",
         "train_cfg.max_epochs=2", "train_cfg.val_interval=5",
         "custom_hooks=[]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # 24 training images, batch 4: 12 iterations; validation at 5, 10, 12
    lines = [line for line in result.stdout.splitlines() if "(val)" in line]
    assert "Epoch(val)" not in result.stdout
    assert [line.split("Iter(val) ")[1].split("]")[0] for line in lines] == [
        "[5/12", "[10/12", "[12/12"]
    assert all(line.count("val/loss") == 1 for line in lines)
    scalars, = glob.glob(str(tmp_path / "work" / "*" / "vis_data" /
                             "scalars.json"))
    with open(scalars) as f:
        steps = [row["step"] for row in map(json.loads, f) if "val/loss" in row]
    assert steps == [5, 10, 12]
