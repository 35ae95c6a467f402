# Logit-normal timestep sampling (Stable Diffusion 3)
# on the SD v1.5 LoRA seed config.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

model = dict(timesteps_generator=dict(
    type="LogitNormalTimeSteps", mean=0.0, std=1.0))
