"""SpeedLogProcessor: it/s and peak memory in the log and the scalar log."""
import glob
import json

from mmengine.config import Config
from mmengine.runner import Runner

import diffengine.engine  # noqa: F401  (registers the log processor)
from diffengine.engine.log_processor import peak_ram_mb
from tests.conftest import tiny_train_config


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
