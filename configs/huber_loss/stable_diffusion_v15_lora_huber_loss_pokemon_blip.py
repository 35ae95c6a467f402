# Scheduled pseudo-Huber loss (Khrapov et al., 2024; kohya's
# loss_type=huber) on the SD v1.5 LoRA seed config.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

# kohya's defaults: huber_c 0.1 with the SNR schedule
model = dict(loss=dict(type="HuberLoss", delta=0.1, schedule="snr"))
