from diffengine.datasets.hf_dataset import HFDataset, load_hf_dataset
from diffengine.datasets.image import open_image, to_rgb
from diffengine.datasets.samplers import DeterministicSampler, sample_seed
from diffengine.datasets.transforms import *  # noqa: F403

__all__ = [
    "DeterministicSampler",
    "HFDataset",
    "load_hf_dataset",
    "open_image",
    "sample_seed",
    "to_rgb",
]
