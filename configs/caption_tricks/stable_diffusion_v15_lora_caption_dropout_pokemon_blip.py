# Caption dropout on the SD v1.5 LoRA seed config: 10% of the samples train
# with the empty caption, the unconditional prediction that classifier-free
# guidance uses.
_base_ = ["../stable_diffusion_lora/stable_diffusion_v15_lora_pokemon_blip.py"]

train_pipeline = [
    dict(type="ResizeShortestEdge", size=512, interpolation="bilinear"),
    dict(type="RandomCrop", size=512),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="RandomTextDrop", p=0.1),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
