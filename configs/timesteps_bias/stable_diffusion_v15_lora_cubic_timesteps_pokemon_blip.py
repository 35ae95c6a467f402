# Cubic timestep sampling, t = (1 - u^3) T (T2I-Adapter)
# on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

model = dict(timesteps_generator=dict(type="CubicSamplingTimeSteps"))
