# The middle half of the timesteps drawn 5x as often (--timestep_bias_strategy range)
# on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

model = dict(timesteps_generator=dict(
    type="RangeTimeSteps", bias_multiplier=5.0, bias_begin=0.25, bias_end=0.75))
