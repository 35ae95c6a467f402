"""The GPU sweep's arithmetic and, on the CPU, its plumbing."""
import json
import os

import pytest
import torch

from benchmarks.flux_shaped import flux_shaped_models
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


def test_flux_sample_flops():
    assert sample_gflop(True, 1024, "flux-dev") == pytest.approx(2.20 * 74428)
    assert sample_gflop(False, 1024, "flux-schnell") == pytest.approx(
        2.19 * 69507 + 4879 + 213)


@pytest.mark.parametrize("family, tiny", [("flux-dev", "tiny_flux"),
                                          ("flux-schnell",
                                           "tiny_flux_schnell")])
def test_flux_rows_checkpoint_and_run_on_the_cpu(family, tiny, request,
                                                  tmp_path):
    out = tmp_path / "rows.json"
    model = request.getfixturevalue(tiny)
    assert main(["--family", family, "--device", "cpu", "--model", model,
                 "--resolution", "32", "--batch-sizes", "1", "--steps", "1",
                 "--warmup", "1", "--num-workers", "0", "--no-compile",
                 "--remove-model", "--folder", str(tmp_path),
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    # FLUX.1 trains with gradient checkpointing only, as its configs do
    assert [(r["cached"], r["checkpointing"]) for r in rows] == [
        (True, True), (False, True)]
    assert all(r["samples_per_s"] > 0 for r in rows)
    assert os.path.isdir(model)  # --remove-model removes built models only


def test_flux_shaped_models_have_flux1s_shapes():
    dev = flux_shaped_models("dev", device="meta")
    schnell = flux_shaped_models("schnell", device="meta")
    assert sum(p.numel() for p in dev[0].parameters()) == 11_901_408_320
    assert dev[0].config.guidance_embeds
    assert not schnell[0].config.guidance_embeds
    assert dev[1].config.latent_channels == 16
    assert dev[1].config.scaling_factor == 0.3611
    assert dev[2].config.hidden_size == 768  # CLIP-L, the pooled projection
    assert dev[3].config.d_model == dev[0].config.joint_attention_dim


def test_sd35_large_shape():
    from diffusers import SD3Transformer2DModel

    from benchmarks.gpu_sweep import SD35_LARGE_TRANSFORMER_CONFIG
    from diffengine.architectures import SD35_LARGE, sd3_architecture

    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER_CONFIG)
    assert sum(p.numel() for p in transformer.parameters()) == 8_056_627_520
    assert sd3_architecture(transformer.config) == SD35_LARGE


def test_memory_rows_dry_run_prints_their_overrides(capsys):
    assert main(["--family", "flux-dev", "--memory-rows", "bf16", "float8",
                 "nf4", "offload", "sharded", "--dry-run"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split(":")[0] for row in rows] == [
        f"flux-dev b1_cached_gc_{name}"
        for name in ("bf16", "float8", "nf4", "offload", "sharded")]
    assert all("model.drop_text_encoders_after_caching=True" in row
               for row in rows)
    assert "model.quantization.weights=float8" in rows[1]
    assert "model.quantization.backend=bitsandbytes" in rows[2]
    assert "model.group_offloading.offload_type=block_level" in rows[3]
    assert rows[4].endswith("model_wrapper_cfg.type=FullyShardWrapper")
