_base_ = [
    "../_base_/models/stable_diffusion_xl_lora_textencoder.py",
    "../_base_/datasets/pokemon_blip_xl.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]
