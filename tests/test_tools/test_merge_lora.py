import os

import pytest
import torch
from safetensors import safe_open

from diffengine.tools.merge_lora import main


def test_merge_lora_writes_a_diffusers_folder(lora_step, tmp_path, capsys):
    out = tmp_path / "merged"
    main([lora_step.step_dir, "--out", str(out), "--scale", "0.8"])
    assert os.path.isfile(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert "fused at scale 0.8" in capsys.readouterr().out


def test_merge_lora_writes_a_single_file(lora_step, tmp_path, capsys):
    out = tmp_path / "merged.safetensors"
    main([lora_step.step_dir, "--format", "single-file", "--out", str(out),
          "--dtype", "float16"])
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == (
            torch.float16)
        assert "cond_stage_model.transformer.text_model.final_layer_norm." \
            "weight" in f.keys()  # noqa: SIM118
    printed = capsys.readouterr().out
    assert "(float16)" in printed and "from_single_file" in printed


def test_merge_lora_refuses_a_mismatched_output(lora_step, tmp_path):
    with pytest.raises(SystemExit):
        main([lora_step.step_dir, "--format", "ckpt", "--out", "x.ckpt"])
    with pytest.raises(ValueError, match="name the output to match"):
        main([lora_step.step_dir, "--out", str(tmp_path / "x.safetensors")])
