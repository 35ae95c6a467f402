import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from diffengine.errors import ConfigError
from diffengine.testing import make_tiny_flux


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_make_tiny_flux_loads_and_draws(tmp_path, variant):
    path = make_tiny_flux(str(tmp_path / variant), variant=variant)
    pipe = FluxPipeline.from_pretrained(path)
    latent_channels = pipe.vae.config.latent_channels
    assert pipe.transformer.config.in_channels == 4 * latent_channels == 64
    config = pipe.transformer.config
    assert sum(config.axes_dims_rope) == config.attention_head_dim
    assert config.guidance_embeds == (variant == "dev")
    assert pipe.scheduler.config.use_dynamic_shifting == (variant == "dev")
    image = pipe("a red circle", height=64, width=64, num_inference_steps=2,
                 max_sequence_length=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 0


def test_make_tiny_flux_rejects_unknown_variant(tmp_path):
    with pytest.raises(ConfigError, match="variant='pro'"):
        make_tiny_flux(str(tmp_path), variant="pro")
