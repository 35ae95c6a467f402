"""The benchmark harness: both sides train, the CLI prints the table."""
import json

import pytest

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
