# Logit-normal timestep sampling (Stable Diffusion 3)
# on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

model = dict(timesteps_generator=dict(
    type="LogitNormalTimeSteps", mean=0.0, std=1.0))
