# Earlier timesteps drawn 5x as often (diffusers' --timestep_bias_strategy earlier)
# on the SD v1.5 LoRA seed config.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

model = dict(timesteps_generator=dict(
    type="EarlierTimeSteps", bias_multiplier=5.0, bias_portion=0.25))
