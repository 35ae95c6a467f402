import json

import numpy as np
import pytest
from PIL import Image

from diffengine.errors import ConfigError
from diffengine.tools.plot_loss import main, moving_average, read_scalar_log


def write_run(work_dir, timestamp, steps, loss):
    folder = work_dir / timestamp / "vis_data"
    folder.mkdir(parents=True)
    with open(folder / "scalars.json", "w") as f:
        for step in steps:
            f.write(json.dumps({"lr": 1e-4, "loss": loss(step), "time": 0.5,
                                "it/s": 2.0, "iter": step, "step": step,
                                "epoch": 1}) + "\n")


def test_resumed_runs_join_into_one_curve(tmp_path):
    write_run(tmp_path, "20260101_100000", range(10, 60, 10), lambda s: 1.0)
    # resumed from step 30: its rows replace the first run's from there
    write_run(tmp_path, "20260101_110000", range(40, 80, 10), lambda s: 0.5)
    rows = read_scalar_log(str(tmp_path))
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60, 70]
    assert [r["loss"] for r in rows] == [1.0] * 3 + [0.5] * 4


def test_plot_loss_writes_a_png(tmp_path, capsys):
    write_run(tmp_path, "20260101_100000", range(1, 41), lambda s: 1 / s)
    out = tmp_path / "plots" / "loss.png"
    main([str(tmp_path), "--out", str(out), "--window", "5"])
    assert Image.open(out).size == (800, 450)
    assert "loss over 40 log lines, steps 1-40, 1.0000 -> 0.0250" in (
        capsys.readouterr().out)
    with pytest.raises(ConfigError, match=r"\['grad_norm'\] not logged"):
        main([str(tmp_path), "--out", str(out), "--keys", "grad_norm"])
    with pytest.raises(FileNotFoundError, match=r"scalars\.json"):
        main([str(tmp_path / "plots")])


def test_moving_average_is_trailing():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert moving_average(values, 2).tolist() == [1.0, 1.5, 2.5, 3.5]
