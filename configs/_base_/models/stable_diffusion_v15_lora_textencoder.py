# Stable Diffusion v1.5 LoRA on the UNet (as stable_diffusion_v15_lora.py)
# and on the CLIP text encoder's attention projections.
_base_ = "./stable_diffusion_v15_lora.py"

model = dict(
    text_encoder_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    ),
)
