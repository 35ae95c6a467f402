_base_ = [
    "../_base_/models/stable_diffusion_3_5_lora.py",
    "../_base_/datasets/pokemon_blip_1024.py",
    "../_base_/schedules/stable_diffusion_3_50e.py",
    "../_base_/default_runtime.py",
]
# 8.1 billion transformer parameters: batch 1, activations recomputed in the
# backward pass, and the frozen base in bfloat16 (16 GB for the transformer).
model = dict(model="stabilityai/stable-diffusion-3.5-large",
             gradient_checkpointing=True, weight_dtype="bfloat16")
train_dataloader = dict(batch_size=1)
# SD3.5 Large's model card: 28 steps at guidance 3.5.
custom_hooks = [
    dict(type="VisualizationHook", prompt=["yoda pokemon"], seed=[0, 1, 2, 3],
         num_inference_steps=28, guidance_scale=3.5),
]
