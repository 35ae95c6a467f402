# Multi-resolution (pyramid) noise on the SD v1.5 LoRA seed config.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

model = dict(noise_generator=dict(
    type="PyramidNoise", discount=0.9, random_multiplier=True))
