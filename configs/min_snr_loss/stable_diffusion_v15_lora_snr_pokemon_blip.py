# Min-SNR loss weighting (Hang et al., 2023) on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

# gamma 5, the paper's value
model = dict(loss=dict(type="SNRL2Loss", snr_gamma=5.0))
