import pytest
from safetensors.torch import load_file

from diffengine.tools.export_lora import main


def test_export_lora_writes_kohya_by_default(lora_step, tmp_path, capsys):
    out = tmp_path / "loras" / "shapes.safetensors"
    main([lora_step.step_dir, "--out", str(out)])
    tensors = load_file(str(out))
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert capsys.readouterr().out.startswith(
        f"wrote {out} (kohya, {len(tensors)} tensors, {len(tensors) // 3} "
        "modules, ")
    with pytest.raises(SystemExit):
        main([lora_step.step_dir, "--out", str(out), "--format", "ckpt"])


def test_export_lora_says_where_a_dora_file_loads(kind_step, tmp_path, capsys):
    out = tmp_path / "dora.safetensors"
    main([kind_step("DoRA").step_dir, "--out", str(out)])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "DoRA: dora_scale written for ComfyUI and Forge; AUTOMATIC1111 reads "
        "only input-axis DoRA and does not load this file correctly")
    main([kind_step("DoRA").step_dir, "--out", str(out), "--dora-reader",
          "lycoris"])
    assert "written for LyCORIS" in capsys.readouterr().out
