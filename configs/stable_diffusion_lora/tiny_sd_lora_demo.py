# The offline demo: the pretrained tiny base of `python tools/make_demo.py`
# (it draws circles, squares and triangles in six colours) learns a shape it
# never saw, a ring named by a word it never read, "zorb", from 24 captioned
# images; 8 more are held out for the validation loss. Trains in a few
# minutes on two CPU cores; the samples at step 0 show the base's attempt,
# the later ones the ring, and ShapeScorer logs how much each shows it.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

model = dict(model="data/demo/tiny-sd", unet_lora_config=dict(r=8, lora_alpha=8))

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
        dataset="data/demo/zorbs",
        caption_column="text",
        # A quarter of the 32 images, drawn with validation_seed, is held out.
        validation_fraction=0.25,
        pipeline=train_pipeline,
    ),
)
# The held-out quarter, without random transforms; its loss at fixed noise
# and timesteps is logged as val/loss every 30 iterations. (`_delete_`: the
# bases set no validation.)
val_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=0,
    dataset=dict(
        type="HFDataset",
        dataset="data/demo/zorbs",
        caption_column="text",
        validation_fraction=0.25,
        subset="validation",
        pipeline=[
            dict(type="ResizeShortestEdge", size=64),
            dict(type="CenterCrop", size=64),
            dict(type="ImageToNormalizedTensor"),
            dict(type="PackInputs"),
        ],
    ),
)
val_cfg = dict(_delete_=True, type="ValidationLossLoop")
val_evaluator = dict(_delete_=True, type="DenoisingLossMetric")

# A higher rate than for SD1.5: a tiny model and a new shape to learn within
# minutes.
optim_wrapper = dict(optimizer=dict(lr=2e-3))
train_cfg = dict(max_epochs=50, val_interval=30, val_by_epoch=False)
randomness = dict(seed=0)

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=25),
)
custom_hooks = [
    dict(
        type="VisualizationHook",
        prompt=["a red zorb on a white background",
                "a blue zorb on a black background"],
        seed=[0, 1, 2, 3],
        interval=25,
        # The tiny base draws its shapes cleanest at a low guidance; PNDM
        # needs its default 50 steps on it.
        guidance_scale=3.0,
        # The base's attempt (step 0) beside the later grids.
        at_start=True,
        scorer=dict(type="ShapeScorer"),
    ),
]
