# The Pokémon BLIP captions (833 images); lambdalabs/pokemon-blip-captions
# was taken down, svjack's copy has the same images with English captions in
# `en_text`.
train_pipeline = [
    dict(type="ResizeShortestEdge", size=512, interpolation="bilinear"),
    dict(type="RandomCrop", size=512),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    dataset=dict(
        type="HFDataset",
        dataset="svjack/pokemon-blip-captions-en-zh",
        image_column="image",
        caption_column="en_text",
        pipeline=train_pipeline,
    ),
    # Each sample carries a seed from (seed, epoch, index): crops, flips and
    # noise replay exactly across process counts and resumes.
    sampler=dict(type="DeterministicSampler", shuffle=True),
)

val_dataloader = None
val_evaluator = None
test_dataloader = None
test_evaluator = None

# A grid of four seeds per epoch; `mim run diffengine generate "yoda pokemon"
# work_dirs/<config>/step<N> --seed 0 1 2 3` draws the same images.
custom_hooks = [
    dict(type="VisualizationHook", prompt=["yoda pokemon"], seed=[0, 1, 2, 3]),
]
