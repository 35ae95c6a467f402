# Multi-resolution (pyramid) noise on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

model = dict(noise_generator=dict(
    type="PyramidNoise", discount=0.9, random_multiplier=True))
