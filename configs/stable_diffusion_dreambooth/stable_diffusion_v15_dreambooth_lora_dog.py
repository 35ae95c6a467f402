_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/dog_dreambooth.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

# 5 epochs of 100 iterations: 500 steps, as diffusers' DreamBooth LoRA
# example trains the dog.
train_cfg = dict(max_epochs=5)
