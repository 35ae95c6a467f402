# EMA of the LoRA weights on the SD v1.5 LoRA seed config: the step folders
# and the samples hold the average, the .pth files both.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

custom_hooks = [
    dict(type="VisualizationHook", prompt=["yoda pokemon"], seed=[0, 1, 2, 3]),
    # diffusers' ema decay 0.9999; the average spans ~10k of the 10,450 steps
    dict(type="LoRAEMAHook", momentum=1e-4),
]
