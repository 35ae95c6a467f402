# FLUX.1 [dev] with LoRA on every attention projection of the transformer:
# the image and text streams of the 19 double-stream blocks (to_q, to_k,
# to_v, to_out.0 and add_q_proj, add_k_proj, add_v_proj, to_add_out) and
# the queries, keys and values of the 38 single-stream blocks (which have
# no to_out), as diffusers' train_dreambooth_lora_flux.py targets them.
model = dict(
    type="Flux",
    model="black-forest-labs/FLUX.1-dev",
    transformer_lora_config=dict(
        type="LoRA",
        r=16,
        lora_alpha=16,  # alpha = r: strength 1 at load time
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                        "add_k_proj", "add_v_proj", "to_add_out"],
    ),
    # σ drawn logit-normal, then shifted by the scheduler config's
    # resolution-dependent mu: kohya's sd-scripts' "flux_shift" sampling
    timesteps_generator=dict(type="LogitNormalTimeSteps"),
    # a 12 billion parameter transformer and T5-XXL: the frozen base in
    # bfloat16 (24 GB for the transformer) and activations recomputed in the
    # backward pass
    weight_dtype="bfloat16",
    gradient_checkpointing=True,
)
