import os

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open

from diffengine.export.merged_model import from_single_file_caveat
from diffengine.export.single_file import save_single_file, to_single_file
from diffengine.tools.merge_lora import main
from tests.test_export.test_single_file_sdxl import (  # noqa: F401
    assert_same_weights,
    sdxl_base,
    sdxl_step,
)


def run_printed_code(printed: str):
    """Run the loading line that merge_lora printed, exactly, and return the
    pipeline it makes."""
    lines = [line.strip() for line in printed.splitlines()
             if "from diffusers import" in line]
    assert len(lines) == 1, printed
    namespace: dict = {}
    exec(lines[0], namespace)
    return namespace["pipe"]


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
    loaded = run_printed_code(printed)
    assert type(loaded) is StableDiffusionPipeline
    assert loaded.unet.dtype == torch.float16


def test_printed_code_loads_the_sd1_single_file(lora_step, tiny_sd, tmp_path,
                                                capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    main([lora_step.step_dir, "--format", "single-file", "--out",
          "merged.safetensors"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[1:] == [
        "    from diffusers import StableDiffusionPipeline; pipe = "
        "StableDiffusionPipeline.from_single_file('merged.safetensors', "
        f"config={tiny_sd!r})",
        "or put it in the checkpoint folder of AUTOMATIC1111 or ComfyUI"]
    loaded = run_printed_code(printed)
    merged = StableDiffusionPipeline.from_single_file(
        "merged.safetensors", config=tiny_sd)
    for part in ("unet", "vae", "text_encoder"):
        ours = getattr(merged, part).state_dict()
        theirs = getattr(loaded, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part


def test_printed_code_loads_the_sdxl_single_file(
        sdxl_step, sdxl_base, tmp_path, capsys):  # noqa: F811
    out = str(tmp_path / "merged-xl.safetensors")
    main([sdxl_step, "--format", "single-file", "--out", out])
    printed = capsys.readouterr().out
    assert "note:" not in printed
    loaded = run_printed_code(printed)
    assert type(loaded) is StableDiffusionXLPipeline
    folder = str(tmp_path / "merged-xl")
    main([sdxl_step, "--out", folder])
    printed = capsys.readouterr().out
    assert printed.splitlines()[1] == (
        "    from diffusers import DiffusionPipeline; pipe = "
        f"DiffusionPipeline.from_pretrained({folder!r})")
    assert_same_weights(run_printed_code(printed), loaded)


def test_merge_lora_refuses_a_mismatched_output(lora_step, tmp_path):
    with pytest.raises(SystemExit):
        main([lora_step.step_dir, "--format", "ckpt", "--out", "x.ckpt"])
    with pytest.raises(ValueError, match="name the output to match"):
        main([lora_step.step_dir, "--out", str(tmp_path / "x.safetensors")])


def test_equal_text_encoder_widths_are_called_out(tiny_sdxl, tmp_path, capsys):
    # the demo's tiny SDXL: both text encoders 32 wide
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    out = str(tmp_path / "tiny-xl.safetensors")
    save_single_file(to_single_file(pipe.unet, pipe.vae, pipe.text_encoder,
                                    pipe.text_encoder_2), out)
    loaded = StableDiffusionXLPipeline.from_single_file(
        out, config=tiny_sdxl, local_files_only=True)
    ours = pipe.text_encoder_2.state_dict()
    theirs = loaded.text_encoder_2.state_dict()
    assert not all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert from_single_file_caveat(pipe) == (
        "note: both text encoders of this base are 32 wide, and diffusers' "
        "from_single_file tells SDXL's apart by width, so it reads the "
        "second one wrongly; AUTOMATIC1111 and ComfyUI read them by name, "
        "and --format diffusers loads in diffusers")
