# Stable Diffusion XL base 1.0 with LoRA on the UNet's attention
# projections. SDXL's VAE overflows in fp16: the base's (force_upcast) is
# kept in fp32 with a half-precision base; give
# vae_model="madebyollin/sdxl-vae-fp16-fix" to train it in fp16.
model = dict(
    type="StableDiffusionXL",
    model="stabilityai/stable-diffusion-xl-base-1.0",
    vae_model=None,
    unet_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,  # alpha = r: strength 1 at load time
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    ),
)
