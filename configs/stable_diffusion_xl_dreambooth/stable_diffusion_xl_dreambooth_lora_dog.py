_base_ = [
    "../_base_/models/stable_diffusion_xl_lora.py",
    "../_base_/datasets/dog_dreambooth_xl.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

# 3 epochs of 200 iterations (batch 2): 600 steps.
train_cfg = dict(max_epochs=3)
