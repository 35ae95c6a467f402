# Debiased-estimation loss weighting, 1/sqrt(SNR) (Yu et al., 2023), on the
# SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

model = dict(loss=dict(type="DeBiasEstimationLoss"))
