# Stable Diffusion v1.5 (the official copy since runwayml's repo was
# removed), with LoRA on the UNet's attention projections.
model = dict(
    type="StableDiffusion",
    model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    unet_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,  # alpha = r: strength 1 at load time
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    ),
)
