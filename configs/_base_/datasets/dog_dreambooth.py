# DreamBooth on diffusers' five photos of one dog (diffusers/dog-example),
# with prior preservation: 200 photos of dogs drawn by the base model at
# the start (once; later runs reuse them) train beside them. An epoch holds
# the 200 class images and as many instance samples (each dog photo 40
# times), 100 iterations at batch 4.
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
        type="DreamBoothDataset",
        dataset="diffusers/dog-example",
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of a dog",
        # None: work_dir/class_images/a_photo_of_a_dog
        class_data_dir=None,
        num_class_images=200,
        prior_loss_weight=1.0,
        pipeline=train_pipeline,
    ),
    sampler=dict(type="DeterministicSampler", shuffle=True),
)

val_dataloader = None
val_evaluator = None
test_dataloader = None
test_evaluator = None

custom_hooks = [
    dict(type="VisualizationHook", prompt=["a photo of sks dog in a bucket"],
         seed=[0, 1, 2, 3]),
]
