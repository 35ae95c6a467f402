import numpy as np
import pytest
from PIL import Image

from diffengine.datasets import open_image, to_rgb


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "CMYK", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (5, 4), (200, 100, 50)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (5, 4)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))
    assert list(to_rgb(image).getdata()) == [(255, 0, 0), (255, 255, 255)]


def test_16_bit_grayscale_is_scaled_not_clipped():
    array = np.array([[0, 32896, 65535]], dtype=np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(array)))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_bad_files_are_named(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(OSError, match=r"cannot read image .*notes\.png"):
        open_image(str(text))
    Image.new("RGB", (64, 64), "red").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"cannot read image .*cut\.jpg"):
        open_image({"path": str(tmp_path / "cut.jpg"), "bytes": None})
    with pytest.raises(OSError, match=r"missing\.png"):
        open_image(str(tmp_path / "missing.png"))
