"""The GPU sweep's arithmetic and, on the CPU, its plumbing."""
import json

import pytest

from benchmarks.gpu_sweep import main, sample_gflop


def test_sample_flops_per_family():
    # 2.15 × the UNet forward, plus VAE and text encoders when not cached
    assert sample_gflop(True, 512, "sd15") == pytest.approx(2.15 * 803)
    assert sample_gflop(False, 512, "sd15") == pytest.approx(
        2.15 * 803 + 1117 + 13)
    assert sample_gflop(True, 1024, "sdxl") == pytest.approx(2.15 * 6761)
    assert sample_gflop(False, 512, "sdxl") == pytest.approx(
        (2.15 * 6761 + 4879 + 111) / 4)
    assert sample_gflop(True, 1024, "sd35") == pytest.approx(2.36 * 10783)


@pytest.mark.parametrize("family, tiny", [("sdxl", "tiny_sdxl"),
                                          ("sd35", "tiny_sd3")])
def test_rows_run_on_the_cpu(family, tiny, request, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["--family", family, "--device", "cpu",
                 "--model", request.getfixturevalue(tiny),
                 "--resolution", "32", "--batch-sizes", "1", "--steps", "1",
                 "--warmup", "1", "--num-workers", "0", "--no-compile",
                 "--folder", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["cached"], r["checkpointing"]) for r in rows] == [
        (True, False), (True, True), (False, False), (False, True)]
    assert all(r["samples_per_s"] > 0 for r in rows)
    assert "all rows:" in capsys.readouterr().out
