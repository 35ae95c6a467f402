# Your own photos of mixed sizes and orientations (data/my_images, an
# imagefolder): each trains uncropped at kohya's aspect-ratio bucket nearest
# its shape, about 512² px (256 to 1024 px a side, in steps of 64), and each
# batch holds one bucket.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

train_pipeline = [
    dict(type="BucketResizeCrop", resolution=512, min_bucket_reso=256,
         max_bucket_reso=1024, bucket_reso_steps=64),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(
    dataset=dict(dataset="data/my_images", caption_column="text",
                 pipeline=train_pipeline),
    # Each bucket's incomplete last batch is kept, padded with zero-weight
    # copies so that it trains the mean of its real images.
    batch_sampler=dict(type="AspectRatioBatchSampler", drop_last=False),
)
custom_hooks = [
    dict(type="VisualizationHook", prompt=["a photo of sks dog"],
         seed=[0, 1, 2, 3]),
]
