# lr 1e-4 as in diffusers' train_text_to_image_lora.py: LoRA updates a
# low-rank delta from zero, which needs a larger step than a full fine-tune
# (1e-5).
optim_wrapper = dict(
    type="AmpOptimWrapper",
    dtype="float16",
    optimizer=dict(type="AdamW", lr=1e-4, weight_decay=1e-2),
    clip_grad=dict(max_norm=1.0),
)

train_cfg = dict(by_epoch=True, max_epochs=50)
val_cfg = None
test_cfg = None
