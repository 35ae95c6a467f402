# Tag captions ("sks dog, red collar, grass") on your own image folder, as
# kohya's shuffle_caption + keep_tokens=1 and caption_dropout_rate=0.05:
# the first tag (the trigger word) stays first, the others are shuffled per
# sample, and 5% of the samples train with the empty caption.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

train_pipeline = [
    dict(type="ResizeShortestEdge", size=512, interpolation="bilinear"),
    dict(type="RandomCrop", size=512),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="ShuffleCaptionTags", keep_tokens=1, separator=","),
    dict(type="RandomTextDrop", p=0.05),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
# An image folder with metadata.jsonl (file_name, text); kohya-style folders
# get one with `mim run diffengine kohya_to_imagefolder FOLDER`.
train_dataloader = dict(
    dataset=dict(dataset="data/my_images", caption_column="text",
                 pipeline=train_pipeline))
custom_hooks = [
    dict(type="VisualizationHook", prompt=["sks dog, grass"], seed=[0, 1, 2, 3]),
]
