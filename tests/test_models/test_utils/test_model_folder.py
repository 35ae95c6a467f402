"""The base model a step records: an absolute folder or a hub id."""
import os

from safetensors import safe_open

from diffengine.adapter_file import read_adapter_file
from diffengine.export import export_lora
from diffengine.models import StableDiffusion
from diffengine.models.utils.model_folder import resolve_model
from tests.conftest import UNET_TARGETS


def test_resolve_model(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("owner/name") == str(tmp_path / "owner" / "name")
    assert resolve_model("./owner/name/") == str(tmp_path / "owner" / "name")
    # not a folder here: a hub id, left for from_pretrained
    assert resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5") == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_a_relative_base_is_recorded_absolute(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(tiny_sd))
    model = StableDiffusion(os.path.basename(tiny_sd),
                            unet_lora_config=dict(r=2,
                                                  target_modules=UNET_TARGETS))
    step = tmp_path / "step1"
    model.save_lora_weights(str(step))
    assert read_adapter_file(str(step)).training["base_model"] == tiny_sd

    monkeypatch.chdir(tmp_path)  # export from elsewhere
    out = str(tmp_path / "lora.safetensors")
    export_lora(str(step), out)
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_sd_model_name"] == tiny_sd
    assert metadata["diffengine.base_model"] == tiny_sd
    assert os.path.isabs(tiny_sd)
