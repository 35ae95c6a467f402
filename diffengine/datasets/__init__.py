from diffengine.datasets.dreambooth import DreamBoothDataset
from diffengine.datasets.hf_dataset import HFDataset, load_hf_dataset
from diffengine.datasets.image import open_image, to_rgb
from diffengine.datasets.kohya_folder import (
    KohyaFolderDataset,
    scan_kohya_folder,
    write_imagefolder_metadata,
)
from diffengine.datasets.samplers import (
    AspectRatioBatchSampler,
    DeterministicSampler,
    sample_seed,
)
from diffengine.datasets.transforms import *  # noqa: F403

__all__ = [
    "AspectRatioBatchSampler",
    "DeterministicSampler",
    "DreamBoothDataset",
    "HFDataset",
    "KohyaFolderDataset",
    "load_hf_dataset",
    "open_image",
    "sample_seed",
    "scan_kohya_folder",
    "to_rgb",
    "write_imagefolder_metadata",
]
