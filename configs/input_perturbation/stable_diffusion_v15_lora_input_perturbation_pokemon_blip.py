# Input perturbation (Ning et al., 2023) on the SD v1.5 LoRA seed config.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

# gamma 0.1, the paper's value
model = dict(input_perturbation_gamma=0.1)
