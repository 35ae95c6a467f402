# The DreamBooth dog (dog_dreambooth.py) at SDXL's 1024 px, with each
# sample's original size and crop recorded for SDXL's time_ids; the class
# images are drawn by the SDXL base at its 1024 px.
_base_ = "./dog_dreambooth.py"

train_pipeline = [
    dict(type="ResizeShortestEdge", size=1024, interpolation="bilinear"),
    dict(type="RandomCrop", size=1024),
    dict(type="RandomHorizontalFlip", p=0.5),
    # after the resize, crop and flip: it reads what they record
    dict(type="ComputeTimeIds"),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
