# Scheduled pseudo-Huber loss (Khrapov et al., 2024; kohya's
# loss_type=huber) on the SD v1.5 LoRA seed config.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

# kohya's defaults: huber_c 0.1 with the SNR schedule
model = dict(loss=dict(type="HuberLoss", delta=0.1, schedule="snr"))
