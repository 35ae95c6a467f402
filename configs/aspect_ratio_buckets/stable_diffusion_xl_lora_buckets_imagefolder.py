# SDXL on your own photos of mixed sizes (data/my_images, an imagefolder),
# in kohya's buckets of about 1024² px (512 to 2048 px a side, e.g.
# 832×1216 for a portrait); each sample's original size and crop go into
# SDXL's time_ids.
_base_ = ["../stable_diffusion_xl_lora/stable_diffusion_xl_lora_pokemon_blip.py"]

train_pipeline = [
    dict(type="BucketResizeCrop", resolution=1024, min_bucket_reso=512,
         max_bucket_reso=2048, bucket_reso_steps=64),
    dict(type="RandomHorizontalFlip", p=0.5),
    # after the bucket crop and the flip: it reads what they record
    dict(type="ComputeTimeIds"),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(
    dataset=dict(dataset="data/my_images", caption_column="text",
                 pipeline=train_pipeline),
    batch_sampler=dict(type="AspectRatioBatchSampler", drop_last=False),
)
custom_hooks = [
    dict(type="VisualizationHook", prompt=["a photo of sks dog"],
         seed=[0, 1, 2, 3]),
]
