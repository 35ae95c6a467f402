# The offline demo with LoRA on the text encoder too: the tiny model and
# shapes of `python tools/make_demo.py`, UNet and CLIP attention adapted.
_base_ = ["./tiny_sd_lora_demo.py"]

model = dict(
    text_encoder_lora_config=dict(
        type="LoRA",
        r=4,
        # alpha = 2 × rank: the text encoder's update counts twice at load
        # time; the step files and the kohya export keep that strength.
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    ),
)
