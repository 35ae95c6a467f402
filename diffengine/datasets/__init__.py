from diffengine.datasets.hf_dataset import HFDataset, load_hf_dataset
from diffengine.datasets.image import open_image, to_rgb
from diffengine.datasets.transforms import *  # noqa: F403

__all__ = ["HFDataset", "load_hf_dataset", "open_image", "to_rgb"]
