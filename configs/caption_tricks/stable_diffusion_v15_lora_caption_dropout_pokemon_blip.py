# Caption dropout on the SD v1.5 LoRA seed config: 10% of the samples train
# with the empty caption, the unconditional prediction that classifier-free
# guidance uses.
_base_ = [
    "../_base_/models/stable_diffusion_v15_lora.py",
    "../_base_/datasets/pokemon_blip.py",
    "../_base_/schedules/stable_diffusion_50e.py",
    "../_base_/default_runtime.py",
]

train_pipeline = [
    dict(type="ResizeShortestEdge", size=512, interpolation="bilinear"),
    dict(type="RandomCrop", size=512),
    dict(type="RandomHorizontalFlip", p=0.5),
    dict(type="RandomTextDrop", p=0.1),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
