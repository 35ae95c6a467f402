# Stable Diffusion 3.5 LoRA on the transformer (as stable_diffusion_3_5_lora.py)
# and on the attention projections of both CLIP text encoders; T5 takes no
# adapter (diffusers' SD3 loader reads none).
_base_ = "./stable_diffusion_3_5_lora.py"

model = dict(
    text_encoder_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    ),
)
