_base_ = [
    "../_base_/models/stable_diffusion_3_5_lora.py",
    "../_base_/datasets/pokemon_blip_1024.py",
    "../_base_/schedules/stable_diffusion_3_50e.py",
    "../_base_/default_runtime.py",
]
# SD3.5 Medium's model card: 40 steps at guidance 4.5.
custom_hooks = [
    dict(type="VisualizationHook", prompt=["yoda pokemon"], seed=[0, 1, 2, 3],
         num_inference_steps=40, guidance_scale=4.5),
]
