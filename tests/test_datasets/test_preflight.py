"""The pre-flight scan: photos turned by their EXIF orientation, every bad
file named in one report before training, skip-or-error limits, the same
skipped rows on every process."""
import json
import logging
import os
import pickle
import signal
import socket

import datasets
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from mmengine.logging import MMLogger
from PIL import Image

from diffengine.datasets import (
    DreamBoothDataset,
    HFDataset,
    KohyaFolderDataset,
)
from diffengine.datasets import image as image_module
from diffengine.datasets.preflight import (
    BadImageLimits,
    scan_images,
    scan_worker_count,
)
from diffengine.errors import ConfigError, DataError
from diffengine.stop import StopRequested, request_stop
from tests.conftest import tiny_pipeline
from tests.test_datasets.test_samplers import BUCKET_PIPELINE

PIPELINE = tiny_pipeline()
RED = (255, 0, 0)


def stored_photo(width: int = 96, height: int = 72) -> Image.Image:
    """A grey photo as the camera stores it, red in its top-left corner."""
    array = np.full((height, width, 3), 128, dtype=np.uint8)
    array[:24, :24] = RED
    return Image.fromarray(array)


def save_photo(path, orientation: int, **size) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored_photo(**size).save(path, quality=95, exif=exif.tobytes())


def write_captioned(folder, name: str, caption: str | None = "a photo",
                    image: Image.Image | None = None) -> str:
    """An image with its caption file (none when ``caption`` is None)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    (image or stored_photo(32, 32)).save(path)
    if caption is not None:
        with open(os.path.splitext(path)[0] + ".txt", "w",
                  encoding="utf-8") as f:
            f.write(caption)
    return path


def write_good_photos(folder, count: int) -> None:
    for i in range(count):
        write_captioned(folder, f"photo {i:03d}.png", f"photo {i}")


def red_corner(img: torch.Tensor) -> tuple[str, str]:
    """Which corner of a C×H×W image in [-1, 1] is red: (top|bottom,
    left|right)."""
    height, width = img.shape[1:]
    red = (img[0] > 0.5) & (img[1] < -0.5)
    rows, cols = torch.nonzero(red, as_tuple=True)
    return ("top" if rows.float().mean() < height / 2 else "bottom",
            "left" if cols.float().mean() < width / 2 else "right")


def test_photos_land_in_the_buckets_of_their_displayed_shapes(tmp_path):
    # orientation → (displayed size, where the stored top-left corner shows)
    expected = {1: ((96, 72), ("top", "left")),
                3: ((96, 72), ("bottom", "right")),
                6: ((72, 96), ("top", "right")),
                8: ((72, 96), ("bottom", "left"))}
    for orientation in expected:
        path = tmp_path / f"IMG {orientation} é.jpg"
        save_photo(path, orientation)
        (tmp_path / f"IMG {orientation} é.txt").write_text("a photo")
        assert image_module.image_size(str(path)) == expected[orientation][0]
        assert open_size(path) == expected[orientation][0]
    dataset = KohyaFolderDataset(str(tmp_path), pipeline=BUCKET_PIPELINE)
    buckets = dataset.row_buckets()
    # (height, width): 4:3 landscapes and 3:4 portraits
    assert buckets == [(40, 56), (40, 56), (56, 40), (56, 40)]
    for index, (_, corner) in enumerate(expected.values()):
        img = dataset[index]["inputs"]["img"]
        assert img.shape[1:] == buckets[index]
        assert red_corner(img) == corner, f"orientation {list(expected)[index]}"


def open_size(path) -> tuple[int, int]:
    return image_module.open_image(str(path)).size


def write_three_bad_files(folder) -> None:
    """Ten good photos, a truncated JPEG, a text file named .png and an
    image whose caption file is only whitespace."""
    write_good_photos(folder, 10)
    stored_photo().save(folder / "full.jpg", quality=95)
    data = (folder / "full.jpg").read_bytes()
    os.remove(folder / "full.jpg")
    (folder / "cut off.jpg").write_bytes(data[:len(data) // 2])
    (folder / "cut off.txt").write_text("a cut photo")
    (folder / "notes.png").write_text("not an image")
    (folder / "notes.txt").write_text("notes")
    write_captioned(folder, "empty caption.png", " \n")


THREE_BAD = (
    "cut off.jpg: unreadable (Truncated File Read); empty caption.png: its "
    "caption file empty caption.txt is empty; write a caption in it, or put "
    "the image in a folder named N_<caption>; notes.png: unreadable (cannot "
    "identify image file 'notes.png')")


def test_three_bad_files_are_one_error_before_training(tmp_path):
    write_three_bad_files(tmp_path)
    dataset = KohyaFolderDataset(str(tmp_path), pipeline=PIPELINE)
    with pytest.raises(DataError) as err:
        dataset.preflight()
    assert str(err.value) == (
        f"3 of 13 images of '{tmp_path}' cannot be used, more than the 2 "
        "that max_bad_images=2 and max_bad_fraction=0.05 allow: "
        + THREE_BAD
        + ". Fix or remove them, or raise max_bad_images.")


def test_bad_files_within_the_limits_are_skipped_and_counted(tmp_path):
    write_three_bad_files(tmp_path)
    dataset = KohyaFolderDataset(str(tmp_path), pipeline=PIPELINE,
                                 max_bad_images=3)
    logged = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        dataset.preflight()
    finally:
        logger.removeHandler(handler)
    assert logged == [f"pre-flight: skipped 3 of 13 images of '{tmp_path}' "
                      f"(3 rows): {THREE_BAD}"]
    names = [os.path.basename(i.path) for i in dataset.images]
    bad = {names.index(n) for n in ("cut off.jpg", "notes.png",
                                    "empty caption.png")}
    assert dataset.bad_rows == bad
    # every sample comes from a good row: a bad row's place goes to the next
    texts = [dataset[i]["inputs"]["text"] for i in range(len(dataset))]
    assert set(texts) == {f"photo {i}" for i in range(10)}


@pytest.mark.parametrize("good,bad,max_bad_images,max_bad_fraction,skips", [
    (12, 2, 2, 0.05, True),  # a phone folder with two odd files
    (12, 3, 2, 0.05, False),
    (12, 1, 0, 0.05, False),  # 5% of 13 is under one image
    (95, 5, 0, 0.05, True),  # 5% of 100
    (94, 6, 0, 0.05, False),
    (0, 2, 2, 0.05, False),  # never every image
])
def test_skip_or_error(tmp_path, good, bad, max_bad_images,
                       max_bad_fraction, skips):
    write_good_photos(tmp_path, good)
    for i in range(bad):
        (tmp_path / f"bad {i}.png").write_bytes(b"not a png")
        (tmp_path / f"bad {i}.txt").write_text("bad")
    dataset = KohyaFolderDataset(str(tmp_path), pipeline=PIPELINE,
                                 max_bad_images=max_bad_images,
                                 max_bad_fraction=max_bad_fraction)
    if skips:
        dataset.preflight()
        assert len(dataset.bad_rows) == bad
    else:
        with pytest.raises(DataError, match=f"{bad} of {good + bad} images"):
            dataset.preflight()


def test_limits_are_checked(tmp_path):
    write_good_photos(tmp_path, 1)
    with pytest.raises(ConfigError, match=r"max_bad_images=-1 must be"):
        KohyaFolderDataset(str(tmp_path), max_bad_images=-1)
    with pytest.raises(ConfigError, match=r"max_bad_fraction=1\.5 is not"):
        KohyaFolderDataset(str(tmp_path), max_bad_fraction=1.5)


def test_images_the_pipeline_cannot_take_are_named(tmp_path):
    write_good_photos(tmp_path, 10)
    write_captioned(tmp_path, "banner.png",
                    image=Image.new("RGB", (20000, 20)))
    write_captioned(tmp_path, "icon.png", image=Image.new("RGB", (6, 6)))
    squares = KohyaFolderDataset(str(tmp_path), pipeline=PIPELINE,
                                 max_bad_images=0)
    with pytest.raises(DataError) as err:
        squares.preflight()
    assert str(err.value).endswith(
        ": banner.png: 20000×20 has an aspect ratio of 1000.0:1, beyond the "
        "8:1 that ResizeShortestEdge takes; crop it. Fix or remove them, or "
        "raise max_bad_images.")
    buckets = KohyaFolderDataset(str(tmp_path), pipeline=BUCKET_PIPELINE,
                                 max_bad_images=0)
    with pytest.raises(DataError) as err:
        buckets.row_buckets()
    assert str(err.value).endswith(
        ": banner.png: 20000×20 has an aspect ratio of 1000.0:1, beyond the "
        "8:1 that BucketResizeCrop takes; crop it; icon.png: 6×6: its "
        "height 6 is below bucket_reso_steps=8; enlarge it, drop it, or set "
        "BucketResizeCrop upscale=True. Fix or remove them, or raise "
        "max_bad_images.")


def test_the_scan_runs_once(tmp_path, monkeypatch):
    write_good_photos(tmp_path, 3)
    dataset = KohyaFolderDataset(str(tmp_path), pipeline=BUCKET_PIPELINE)
    checked = []
    real_check = image_module.check_image
    monkeypatch.setattr("diffengine.datasets.preflight.check_image",
                        lambda source: checked.append(source) or real_check(
                            source))
    dataset.preflight()
    dataset.row_buckets()
    dataset.preflight()
    assert len(checked) == 3
    # what a data loader worker gets: the scanned dataset
    pickle.loads(pickle.dumps(dataset)).preflight()
    assert len(checked) == 3


def test_worker_processes_find_what_a_serial_scan_finds(tmp_path):
    write_good_photos(tmp_path, 5)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    save_photo(tmp_path / "turned.jpg", 6)
    sources = sorted(str(p) for p in tmp_path.iterdir()
                     if p.suffix != ".txt")
    serial = scan_images(sources)
    assert scan_images(sources, workers=2) == serial
    assert serial[0].startswith("cannot identify image file")
    assert serial[1:] == [(32, 32)] * 5 + [(72, 96)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_signal_ends_the_scan(tmp_path, workers):
    write_good_photos(tmp_path, 3)
    sources = sorted(str(p) for p in tmp_path.iterdir() if p.suffix != ".txt")
    request_stop(signal.SIGTERM)
    try:
        with pytest.raises(StopRequested) as raised:
            scan_images(sources, workers=workers)
    finally:
        request_stop(0)
    assert raised.value.signum == signal.SIGTERM
    assert scan_images(sources, workers=workers) == [(32, 32)] * 3

def test_an_imagefolder_names_the_image_and_the_metadata_file(tmp_path):
    write_good_photos(tmp_path, 4)
    rows = [{"file_name": f"photo {i:03d}.png", "text": f"photo {i}"}
            for i in range(4)]
    rows[2]["text"] = "   "
    with open(tmp_path / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    dataset = HFDataset(str(tmp_path), pipeline=PIPELINE, max_bad_images=0)
    with pytest.raises(DataError) as err:
        dataset.preflight()
    assert str(err.value) == (
        f"1 of 4 images of '{tmp_path}' cannot be used, more than the 0 that "
        "max_bad_images=0 and max_bad_fraction=0.05 allow: photo 002.png: "
        "its caption ('text' in metadata.jsonl) is empty; write one, or "
        "remove the row. Fix or remove them, or raise max_bad_images.")


def test_hub_style_rows_of_image_bytes(tmp_path):
    photo = tmp_path / "photo.jpg"
    stored_photo().save(photo, quality=95)
    data = photo.read_bytes()
    images = [{"bytes": data, "path": f"{i}.jpg"} for i in range(4)]
    images[1] = {"bytes": data[:len(data) // 2], "path": "cut.jpg"}
    rows = datasets.Dataset.from_dict(
        {"image": images, "text": ["a photo", "a photo", "", "a photo"]},
        features=datasets.Features(image=datasets.Image(),
                                   text=datasets.Value("string")))
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    dataset = HFDataset(str(tmp_path / "rows.parquet"), pipeline=PIPELINE)
    dataset.preflight()
    assert dataset.bad_rows == {1, 2}
    dataset.limits = BadImageLimits(max_bad_images=1, max_bad_fraction=0.05)
    dataset.forget_scan()
    with pytest.raises(DataError) as err:
        dataset.preflight()
    assert str(err.value).endswith(
        "allow: row 1 (cut.jpg): unreadable (Truncated File Read); row 2 "
        f"(2.jpg): its caption ('text' in {tmp_path}/rows.parquet) is empty; "
        "write "
        "one, or remove the row. Fix or remove them, or raise "
        "max_bad_images.")


def test_dreambooth_scans_instance_and_class_images(tmp_path):
    instances = tmp_path / "instances"
    instances.mkdir()
    for i in range(3):
        stored_photo(32, 32).save(instances / f"dog {i}.png")
    class_dir = tmp_path / "class"
    class_dir.mkdir()
    for i in range(3):
        stored_photo(32, 32).save(class_dir / f"{i:04d}.png")
    (class_dir / "0001.png").write_bytes(b"not a png")
    (instances / "dog 1.png").write_bytes(b"not a png either")
    dataset = DreamBoothDataset(
        str(instances), "a photo of sks dog", "a photo of a dog",
        class_data_dir=str(class_dir), num_class_images=3,
        pipeline=PIPELINE)
    dataset.preflight()
    # rows: three instance rows, then three class rows
    assert dataset.bad_rows == {1, 4}
    dataset.limits = BadImageLimits(max_bad_images=1, max_bad_fraction=0.05)
    dataset.forget_scan()
    with pytest.raises(DataError) as err:
        dataset.preflight()
    message = str(err.value)
    assert "2 of 6 images" in message
    assert "dog 1.png: unreadable" in message
    assert f"{class_dir}/0001.png: unreadable" in message


def _scan_on_rank(rank: int, world_size: int, port: int, folder: str,
                  out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
        world_size=world_size)
    checked = []
    real_check = image_module.check_image
    import diffengine.datasets.preflight as preflight
    preflight.check_image = lambda source: checked.append(
        os.path.basename(source)) or real_check(source)
    dataset = KohyaFolderDataset(folder, pipeline=BUCKET_PIPELINE)
    buckets = dataset.row_buckets()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"bad_rows": sorted(dataset.bad_rows), "buckets": buckets,
                   "checked": checked}, f)
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_process_skips_the_same_rows(tmp_path):
    folder = tmp_path / "data"
    write_good_photos(folder, 6)
    (folder / "bad.png").write_bytes(b"not a png")
    (folder / "bad.txt").write_text("bad")
    write_captioned(folder, "uncaptioned.png", caption=None)
    mp.spawn(_scan_on_rank, args=(2, free_port(), str(folder), str(tmp_path)),
             nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text())
             for r in range(2)]
    assert ranks[0]["bad_rows"] == ranks[1]["bad_rows"] == [0, 7]
    assert ranks[0]["buckets"] == ranks[1]["buckets"]
    # each process decoded its half of the images
    assert len(ranks[0]["checked"]) == len(ranks[1]["checked"]) == 4
    assert not set(ranks[0]["checked"]) & set(ranks[1]["checked"])


def test_a_cached_view_is_of_the_turned_photo(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for orientation in (1, 6):
        save_photo(folder / f"{orientation}.jpg", orientation)
        (folder / f"{orientation}.txt").write_text("a photo")

    def encode(images):
        # "latents" that keep the picture: its colours at 1/8 scale
        pooled = torch.nn.functional.avg_pool2d(images, 8)
        return torch.cat([pooled, pooled, pooled], 1)[:, :8]

    dataset = KohyaFolderDataset(str(folder), pipeline=BUCKET_PIPELINE,
                                 cache_latents=True)
    dataset.preflight()
    dataset.build_latent_cache(encode, "colours", str(tmp_path / "cache"))
    landscape, portrait = (dataset[i]["inputs"]["latents"] for i in (0, 1))
    assert landscape.shape == (8, 5, 7) and portrait.shape == (8, 7, 5)
    assert red_corner(landscape[:3]) == ("top", "left")
    assert red_corner(portrait[:3]) == ("top", "right")


def test_workers_only_for_enough_images():
    cores = len(os.sched_getaffinity(0))
    assert scan_worker_count(10) == 1
    assert scan_worker_count(64 * 100) == min(cores, 16)
    assert scan_worker_count(64 * 100, world_size=cores) == 1
