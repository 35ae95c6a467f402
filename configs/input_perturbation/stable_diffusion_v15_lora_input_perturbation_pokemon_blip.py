# Input perturbation (Ning et al., 2023) on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

# gamma 0.1, the paper's value
model = dict(input_perturbation_gamma=0.1)
