import numpy as np
import pytest
from PIL import Image

from diffengine.datasets import open_image, to_rgb
from diffengine.datasets.image import check_image, image_size


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


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("WEBP", "webp"),
                                        ("PNG", "png"), ("TIFF", "tif")])
def test_every_exif_orientation_gives_the_displayed_size(tmp_path, fmt,
                                                         suffix, monkeypatch):
    sizes = {}
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"{orientation}.{suffix}"
        Image.new("RGB", (60, 40)).save(path, fmt, exif=exif.tobytes())
        sizes[orientation] = open_image(str(path)).size
        assert check_image(str(path)) == sizes[orientation]
    # 5 to 8 turn the picture a quarter
    assert sizes == {o: (40, 60) if o >= 5 else (60, 40) for o in sizes}
    # the header alone says so: no pixel is decoded
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", None)
    assert {o: image_size(str(tmp_path / f"{o}.{suffix}"))
            for o in sizes} == sizes
