"""AdapterIO: the trainable weights of each part and the step file, under
their adapter names and their earlier LoRA names."""
import torch
from safetensors import safe_open

from diffengine.models import StableDiffusion
from tests.conftest import TEXT_TARGETS, UNET_TARGETS, perturb_lora


def test_earlier_names_give_the_same(tiny_sd, tmp_path):
    model = StableDiffusion(
        tiny_sd, unet_lora_config=dict(r=2, target_modules=UNET_TARGETS),
        text_encoder_lora_config=dict(r=2, target_modules=TEXT_TARGETS))
    perturb_lora(model)
    assert model.lora_configs is model.adapter_configs
    assert list(model.adapter_configs) == ["unet", "text_encoder"]
    new, old = model.adapter_state_dicts(), model.lora_state_dicts()
    assert new.keys() == old.keys() == {"unet", "text_encoder"}
    for part in new:
        assert new[part].keys() == old[part].keys()
        assert all(torch.equal(new[part][k], old[part][k]) for k in new[part])
    model.save_adapter_weights(str(tmp_path / "new"), {"step": "1"})
    model.save_lora_weights(str(tmp_path / "old"), {"step": "1"})
    files = [safe_open(str(tmp_path / name /
                           "pytorch_lora_weights.safetensors"), "pt")
             for name in ("new", "old")]
    assert files[0].metadata() == files[1].metadata()
    assert all(torch.equal(files[0].get_tensor(k), files[1].get_tensor(k))
               for k in files[0].keys())  # noqa: SIM118
