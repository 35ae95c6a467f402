# Stable Diffusion 3.5 Medium with LoRA on every attention projection of the
# transformer: the image and text streams of the joint blocks (to_q, to_k,
# to_v, to_out.0 and add_q_proj, add_k_proj, add_v_proj, to_add_out), and
# SD3.5 Medium's second image attention (attn2) in its first 13 blocks,
# which the names reach by suffix. 746,496 × r parameters on SD3.5 Medium.
model = dict(
    type="StableDiffusion3",
    model="stabilityai/stable-diffusion-3.5-medium",
    transformer_lora_config=dict(
        type="LoRA",
        r=8,
        lora_alpha=8,  # alpha = r: strength 1 at load time
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                        "add_k_proj", "add_v_proj", "to_add_out"],
    ),
    # the SD3 paper's logit-normal draw of the noise level, before the
    # scheduler config's shift, as diffusers' SD3 script draws it
    timesteps_generator=dict(type="LogitNormalTimeSteps"),
)
