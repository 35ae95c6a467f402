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

__all__ = [
    "CenterCrop",
    "ImageToNormalizedTensor",
    "PackInputs",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
]
