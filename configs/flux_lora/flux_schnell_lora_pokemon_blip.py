_base_ = [
    "../_base_/models/flux_dev_lora.py",
    "../_base_/datasets/pokemon_blip_1024.py",
    "../_base_/schedules/stable_diffusion_3_50e.py",
    "../_base_/default_runtime.py",
]
# [schnell]'s scheduler config has no resolution-dependent shift, and its
# transformer embeds no guidance: the model reads both off the base.
model = dict(model="black-forest-labs/FLUX.1-schnell")
train_dataloader = dict(batch_size=1)
# FLUX.1 [schnell]'s model card: 4 steps, no guidance.
custom_hooks = [
    dict(type="VisualizationHook", prompt=["yoda pokemon"], seed=[0, 1, 2, 3],
         num_inference_steps=4, guidance_scale=0.0),
]
