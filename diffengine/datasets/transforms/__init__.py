from diffengine.datasets.transforms.buckets import (
    BucketResizeCrop,
    kohya_bucket_sizes,
)
from diffengine.datasets.transforms.conditioning import ComputeTimeIds
from diffengine.datasets.transforms.formatting import (
    ImageToNormalizedTensor,
    PackInputs,
)
from diffengine.datasets.transforms.processing import (
    CenterCrop,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShortestEdge,
)
from diffengine.datasets.transforms.text import RandomTextDrop, ShuffleCaptionTags

__all__ = [
    "BucketResizeCrop",
    "CenterCrop",
    "ComputeTimeIds",
    "ImageToNormalizedTensor",
    "PackInputs",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomTextDrop",
    "ResizeShortestEdge",
    "ShuffleCaptionTags",
    "kohya_bucket_sizes",
]
