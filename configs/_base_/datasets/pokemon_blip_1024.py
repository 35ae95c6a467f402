# The Pokémon BLIP captions (pokemon_blip.py) at 1024 px, the resolution
# SD3.5 Medium and Large were made for.
_base_ = "./pokemon_blip.py"

train_pipeline = [
    dict(type="ResizeShortestEdge", size=1024, interpolation="bilinear"),
    dict(type="RandomCrop", size=1024),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
