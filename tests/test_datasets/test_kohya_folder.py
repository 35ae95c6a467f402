"""KohyaFolderDataset and its conversion to an imagefolder."""
import json
import os
import shutil

import pytest
import torch
from mmengine.logging import MMLogger
from PIL import Image, features

from diffengine.datasets import (
    HFDataset,
    KohyaFolderDataset,
    scan_kohya_folder,
    write_imagefolder_metadata,
)
from diffengine.errors import ConfigError, DataError
from diffengine.models import StableDiffusion
from diffengine.registry import DATASETS
from tests.conftest import UNET_TARGETS, tiny_pipeline

PIPELINE = tiny_pipeline()


def write_kohya_folder(path, shapes_data):
    """Captions beside images, a repeat folder, a class-named folder."""
    with open(os.path.join(shapes_data, "metadata.jsonl")) as f:
        rows = [json.loads(line) for line in f]

    def put(index, folder, name, caption=True):
        os.makedirs(folder, exist_ok=True)
        shutil.copy(os.path.join(shapes_data, rows[index]["file_name"]),
                    os.path.join(folder, name))
        if caption:
            stem = os.path.splitext(name)[0]
            with open(os.path.join(folder, f"{stem}.txt"), "w") as f:
                f.write(rows[index]["text"] + "\n")

    put(0, path, "top.png")
    put(1, os.path.join(path, "3_shapes"), "a.png")
    put(2, os.path.join(path, "3_shapes"), "b.png")
    put(3, os.path.join(path, "2_sks shape"), "c.png", caption=False)
    put(4, os.path.join(path, "misc"), "d.png")
    put(5, os.path.join(path, "misc", "deeper"), "ignored.png")
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write("not a caption\n")
    return rows


def test_scan_reads_captions_repeats_and_class_names(tmp_path, shapes_data):
    rows = write_kohya_folder(str(tmp_path), shapes_data)
    images = scan_kohya_folder(str(tmp_path))
    found = {os.path.relpath(i.path, tmp_path): (i.caption, i.repeats)
             for i in images}
    assert found == {
        "top.png": (rows[0]["text"], 1),
        os.path.join("3_shapes", "a.png"): (rows[1]["text"], 3),
        os.path.join("3_shapes", "b.png"): (rows[2]["text"], 3),
        os.path.join("2_sks shape", "c.png"): ("sks shape", 2),
        os.path.join("misc", "d.png"): (rows[4]["text"], 1),
    }


def test_dataset_repeats_images_and_transforms_them(tmp_path, shapes_data):
    rows = write_kohya_folder(str(tmp_path), shapes_data)
    dataset = DATASETS.build(dict(type="KohyaFolderDataset",
                                  dataset=str(tmp_path), pipeline=PIPELINE))
    assert isinstance(dataset, KohyaFolderDataset)
    assert len(dataset) == 1 + 3 + 3 + 2 + 1
    texts = [dataset[i]["inputs"]["text"] for i in range(len(dataset))]
    assert texts.count(rows[1]["text"]) == 3 and texts.count("sks shape") == 2
    img = dataset[0]["inputs"]["img"]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32


def test_missing_captions_and_empty_folders_are_named(tmp_path, shapes_data):
    write_kohya_folder(str(tmp_path), shapes_data)
    os.remove(tmp_path / "top.txt")
    (tmp_path / "misc" / "d.txt").write_text(" \n\t")
    # an empty caption file in a class-named folder falls back to its name
    (tmp_path / "2_sks shape" / "c.txt").write_text("\n")
    images = {os.path.basename(i.path): i
              for i in scan_kohya_folder(str(tmp_path))}
    assert images["top.png"].problem == (
        f"{tmp_path}/top.png: no caption file top.txt beside it; write one, "
        "or put the image in a folder named N_<caption>.")
    assert images["d.png"].problem == (
        f"{tmp_path}/misc/d.png: its caption file d.txt is empty; write "
        "a caption in it, or put the image in a folder named N_<caption>.")
    assert images["c.png"].caption == "sks shape"
    assert images["c.png"].problem is None
    dataset = KohyaFolderDataset(str(tmp_path), pipeline=PIPELINE)
    with pytest.raises(DataError, match=r"d\.txt is empty"):
        dataset.caption_at(len(dataset) - 1)
    with pytest.raises(DataError) as err:
        write_imagefolder_metadata(str(tmp_path))
    assert str(err.value).startswith("2 images have no caption: ")
    assert not (tmp_path / "metadata.jsonl").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        scan_kohya_folder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        KohyaFolderDataset(str(tmp_path / "absent"))


def test_metadata_jsonl_makes_an_imagefolder(tmp_path, shapes_data):
    rows = write_kohya_folder(str(tmp_path), shapes_data)
    out = write_imagefolder_metadata(str(tmp_path))
    assert out == str(tmp_path / "metadata.jsonl")
    with open(out) as f:
        written = [json.loads(line) for line in f]
    assert written[0] == {"file_name": "top.png", "text": rows[0]["text"],
                          "repeats": 1}
    assert {"file_name": "2_sks shape/c.png", "text": "sks shape",
            "repeats": 2} in written
    dataset = HFDataset(str(tmp_path), pipeline=PIPELINE)
    assert len(dataset) == 5
    assert sorted(dataset[i]["inputs"]["text"] for i in range(5)) == sorted(
        [rows[i]["text"] for i in (0, 1, 2, 4)] + ["sks shape"])
    with pytest.raises(ConfigError, match="not below it"):
        write_imagefolder_metadata(str(tmp_path),
                                   str(tmp_path / "misc" / "meta.jsonl"))


def test_cached_latents_encode_a_repeated_image_once(tmp_path, shapes_data,
                                                      tiny_sd):
    write_kohya_folder(str(tmp_path / "data"), shapes_data)
    model = StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS))
    encoded = []

    def encode(images):
        encoded.append(len(images))
        return model.encode_images(images)

    dataset = KohyaFolderDataset(str(tmp_path / "data"), pipeline=PIPELINE,
                                 cache_latents=True)
    log_file = tmp_path / "run.log"
    MMLogger.get_instance("kohya-cache-test", log_file=str(log_file))
    dataset.build_latent_cache(encode, model.latent_encoder_id(),
                               str(tmp_path / "cache"))
    # 10 samples, 5 distinct images, one view each (no flip in PIPELINE)
    assert sum(encoded) == 5
    assert len(list((tmp_path / "cache").glob("*/*.safetensors"))) == 5
    assert "cache_latents: 5 images encoded (1 view each), 0 reused" in (
        log_file.read_text())
    uncached = KohyaFolderDataset(str(tmp_path / "data"), pipeline=PIPELINE)
    for index in (0, 1, 3, 8):
        sample, image = dataset[index]["inputs"], uncached[index]["inputs"]
        assert sample["text"] == image["text"]
        torch.testing.assert_close(
            sample["latents"], model.encode_images(image["img"][None])[0])


def test_every_photo_format_pillow_opens_is_read(tmp_path):
    photo = Image.new("RGB", (40, 24), (200, 30, 30))
    formats = {"a.tif": "TIFF", "b.tiff": "TIFF", "c.gif": "GIF",
               "d.webp": "WEBP", "e.bmp": "BMP", "f.JPG": "JPEG"}
    if features.check("avif"):
        formats["g.avif"] = "AVIF"
    for name, kind in formats.items():
        photo.save(tmp_path / name, kind)
        (tmp_path / name).with_suffix(".txt").write_text(f"photo {name}")
    (tmp_path / "h.heic").write_bytes(b"not read")  # Pillow cannot open it
    dataset = KohyaFolderDataset(str(tmp_path), pipeline=PIPELINE)
    assert sorted(os.path.basename(i.path) for i in dataset.images) == sorted(
        formats)
    dataset.preflight()
    assert dataset.bad_rows == set()
    for index in range(len(dataset)):
        assert dataset[index]["inputs"]["img"].shape == (3, 32, 32)
    # a GIF gives its first frame
    frames = [Image.new("P", (32, 32), i) for i in (1, 2)]
    frames[0].save(tmp_path / "c.gif", save_all=True,
                   append_images=frames[1:])
    assert dataset.get_data_info(2)["img"].getpixel((0, 0)) == (
        frames[0].convert("RGB").getpixel((0, 0)))


def test_an_existing_metadata_file_is_not_overwritten(tmp_path, shapes_data):
    write_kohya_folder(str(tmp_path), shapes_data)
    (tmp_path / "metadata.jsonl").write_text("kept\n")
    with pytest.raises(ConfigError) as err:
        write_imagefolder_metadata(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path}/metadata.jsonl exists; pass --overwrite to replace it.")
    assert (tmp_path / "metadata.jsonl").read_text() == "kept\n"
    write_imagefolder_metadata(str(tmp_path), overwrite=True)
    assert len((tmp_path / "metadata.jsonl").read_text().splitlines()) == 5


def test_caption_files_from_windows_editors(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "bom.png")
    (tmp_path / "bom.txt").write_bytes("\ufeffa photo of sks dog".encode())
    Image.new("RGB", (32, 32)).save(tmp_path / "latin.png")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    bom, latin = scan_kohya_folder(str(tmp_path))
    assert bom.caption == "a photo of sks dog"
    assert latin.problem == (f"{tmp_path}/latin.png: its caption file "
                             "latin.txt is not UTF-8 text; save it as UTF-8.")
