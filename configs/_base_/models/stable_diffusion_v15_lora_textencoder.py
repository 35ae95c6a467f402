# Stable Diffusion v1.5 with LoRA on the UNet's attention and on the CLIP
# text encoder's attention projections.
model = dict(
    type="StableDiffusion",
    model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    unet_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    ),
    text_encoder_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    ),
)
