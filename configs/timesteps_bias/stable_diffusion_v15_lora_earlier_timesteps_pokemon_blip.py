# Earlier timesteps drawn 5x as often (diffusers' --timestep_bias_strategy earlier)
# on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

model = dict(timesteps_generator=dict(
    type="EarlierTimeSteps", bias_multiplier=5.0, bias_portion=0.25))
