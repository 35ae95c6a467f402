# Offset noise (Guttenberg, 2023) on the SD v1.5 LoRA seed config: lets the
# model reach very dark and very bright images.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

model = dict(noise_generator=dict(type="OffsetNoise", offset_weight=0.05))
