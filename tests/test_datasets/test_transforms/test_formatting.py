import pytest
import torch
from PIL import Image

from diffengine.registry import TRANSFORMS


def test_to_tensor_maps_pixels_to_minus_one_one():
    image = Image.new("RGB", (3, 2), (0, 255, 0))
    tensor = TRANSFORMS.build(dict(type="ImageToNormalizedTensor"))(
        {"img": image})["img"]
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[0].unique().tolist() == [-1.0]
    assert tensor[1].unique().tolist() == [1.0]


def test_pack_inputs():
    pack = TRANSFORMS.build(dict(type="PackInputs"))
    assert pack({"img": 1, "text": "t", "flip": True}) == {
        "inputs": {"img": 1, "text": "t"}}
    with pytest.raises(KeyError, match=r"\['text'\] not in the sample"):
        pack({"img": 1})
