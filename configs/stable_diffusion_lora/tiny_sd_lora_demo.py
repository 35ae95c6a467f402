# The offline demo: a tiny SD-1.x-shaped model and 24 captioned shapes, both
# written by `python tools/make_demo.py` (no network). Trains in about a
# minute on two CPU cores and writes work_dirs/tiny_sd_lora_demo/step{N}/.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

model = dict(model="data/demo/tiny-sd", unet_lora_config=dict(r=4, lora_alpha=4))

train_pipeline = [
    dict(type="ResizeShortestEdge", size=64),
    dict(type="RandomCrop", size=64),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(
    batch_size=4,
    # The tiny model trains faster than worker processes start.
    num_workers=0,
    dataset=dict(
        dataset="data/demo/shapes",
        caption_column="text",
        pipeline=train_pipeline,
    ),
)

# A higher rate than for SD1.5: the tiny random base is far from the data,
# and the demo should show the loss fall within a minute.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
train_cfg = dict(max_epochs=50)
randomness = dict(seed=0)

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=25),
)
custom_hooks = [
    dict(
        type="VisualizationHook",
        prompt=["a red circle on a white background",
                "a blue square on a black background"],
        interval=25,
        num_inference_steps=20,
    ),
]
