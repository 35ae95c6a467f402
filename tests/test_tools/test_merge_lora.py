import os

from diffengine.tools.merge_lora import main


def test_merge_lora_writes_a_diffusers_folder(lora_step, tmp_path, capsys):
    out = tmp_path / "merged"
    main([lora_step.step_dir, "--out", str(out), "--scale", "0.8"])
    assert os.path.isfile(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert "fused at scale 0.8" in capsys.readouterr().out
