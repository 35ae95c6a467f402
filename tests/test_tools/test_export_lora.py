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
