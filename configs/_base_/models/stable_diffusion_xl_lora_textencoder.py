# Stable Diffusion XL LoRA on the UNet (as stable_diffusion_xl_lora.py) and
# on the attention projections of both text encoders.
_base_ = "./stable_diffusion_xl_lora.py"

model = dict(
    text_encoder_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    ),
)
