_base_ = [
    "../_base_/models/flux_dev_lora.py",
    "../_base_/datasets/pokemon_blip_1024.py",
    "../_base_/schedules/stable_diffusion_3_50e.py",
    "../_base_/default_runtime.py",
]
train_dataloader = dict(batch_size=1)
# FluxPipeline's defaults for [dev]: 28 steps at (distilled) guidance 3.5.
custom_hooks = [
    dict(type="VisualizationHook", prompt=["yoda pokemon"], seed=[0, 1, 2, 3],
         num_inference_steps=28, guidance_scale=3.5),
]
