"""The benchmark harness: both sides train, the CLI prints the table."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks.diffusers_script import (
    ProgressReader,
    process_cpu_seconds,
    script_command,
)
from benchmarks.framework_loop import framework_config, run_framework
from benchmarks.plain_loop import run_plain
from benchmarks.train_step import main

WORK = dict(resolution=32, batch_size=2, rank=2, steps=2, warmup=1)


@pytest.mark.parametrize("side", ["plain", "framework"])
def test_each_side_reports_its_steps(side, tiny_sd, shapes_data, tmp_path):
    work = dict(WORK, model=tiny_sd, data=shapes_data)
    if side == "plain":
        result = run_plain(**work)
    else:
        result = run_framework(**work, work_dir=str(tmp_path))
    assert len(result["step_times"]) == len(result["cpu_times"]) == 2
    assert all(t > 0 for t in result["step_times"])
    assert result["samples_per_s"] == pytest.approx(2 / result["median_s"])
    assert result["peak_bytes"] > 100 * 2**20  # RSS with torch loaded


def test_framework_config_is_the_benchmark_work(tiny_sd, shapes_data,
                                                tmp_path):
    cfg = framework_config(**WORK, model=tiny_sd, data=shapes_data,
                           work_dir=str(tmp_path),
                           options=("model.channels_last=True", ))
    assert cfg.train_cfg == dict(by_epoch=False, max_iters=3)
    assert cfg.model.unet_lora_config.r == 2 and cfg.model.channels_last
    assert [t.get("size") for t in cfg.train_dataloader.dataset.pipeline][:2] \
        == [32, 32]
    assert cfg.optim_wrapper.type == "OptimWrapper"  # fp32 without CUDA
    assert cfg.custom_hooks == []


def test_cli_alternates_fresh_processes_and_prints_the_table(
        tiny_sd, shapes_data, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["--model", tiny_sd, "--data", shapes_data,
                 "--resolution", "32", "--steps", "1", "--warmup", "1",
                 "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["side", "s/step", "cpu"]
    assert [line.split()[0] for line in lines[1:3]] == ["plain", "framework"]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"plain", "framework"}
    assert report["versions"]["diffengine"]
    assert report["settings"]["threads"] == 1
    assert len(report["results"]["framework"]["runs"]) == 1


def test_progress_reader_times_the_steps_of_a_tqdm_bar():
    # a real tqdm bar named "Steps", as diffusers' script draws it, in a
    # child process whose steps take 0.1, 0.3 and 0.2 s
    code = ("import time\nfrom tqdm.auto import tqdm\n"
            "bar = tqdm(range(3), desc='Steps')\n"
            "for d in (0.1, 0.3, 0.2):\n"
            "    time.sleep(d)\n    bar.update(1)\n"
            "    bar.set_postfix(step_loss=0.5)\n")
    child = subprocess.Popen([sys.executable, "-c", code],
                             stderr=subprocess.PIPE,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    reader = ProgressReader(lambda: process_cpu_seconds(child.pid))
    while chunk := os.read(child.stderr.fileno(), 65536):
        reader.feed(chunk.decode())
    assert child.wait() == 0
    walls, cpus = reader.step_times()
    assert [m[0] for m in reader.marks] == [0, 1, 2, 3]
    assert walls[1:] == pytest.approx([0.3, 0.2], abs=0.08)
    assert walls[1] > walls[2]
    assert all(0 <= c < 0.2 for c in cpus[1:])  # sleeping costs no CPU


def test_progress_reader_splits_an_update_that_covers_several_steps():
    reader = ProgressReader(lambda: 0.0)
    reader.feed("Steps:   0%|          | 0/6 [00:00<?, ?it/s]\r")
    reader.feed("Steps:  50%|#####     | 3/6 [00:01<00:01, 2it/s]\r"
                "Steps:  50%|#####     | 3/6 [00:01<00:01, step_loss=0.1]")
    assert [m[0] for m in reader.marks] == [0, 3]
    walls, _ = reader.step_times()
    assert len(walls) == 3 and walls[0] == walls[1] == walls[2]


def test_diffusers_script_side_names_a_missing_script(tiny_sd, shapes_data,
                                                      tmp_path):
    missing = str(tmp_path / "train_text_to_image_lora.py")
    with pytest.raises(FileNotFoundError, match="does not exist; point it"):
        main(["--model", tiny_sd, "--data", shapes_data, "--resolution",
              "32", "--steps", "1", "--warmup", "1", "--repeats", "1",
              "--diffusers-script", missing])
    command = script_command(missing, tiny_sd, shapes_data, 32, 2, 4, 3, 1,
                             0, str(tmp_path))
    flags = dict(zip(command[2::2], command[3::2], strict=False))
    assert command[1] == missing
    assert flags["--max_train_steps"] == "4"  # warmup + steps
    assert flags["--train_data_dir"] == shapes_data
    assert "--random_flip" in command
