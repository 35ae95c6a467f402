import csv
import json
import os
import shutil

import pytest
import torch
from mmengine.logging import MMLogger

from diffengine.datasets import HFDataset
from diffengine.errors import ConfigError, DataError
from diffengine.models import StableDiffusion
from tests.conftest import UNET_TARGETS, tiny_pipeline

PIPELINE = tiny_pipeline()


def test_imagefolder_with_jsonl(shapes_data):
    dataset = HFDataset(shapes_data, pipeline=PIPELINE)
    assert len(dataset) == 24
    sample = dataset[0]
    assert sample["inputs"]["text"] == "a red circle on a white background"
    img = sample["inputs"]["img"]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert img.min() >= -1.0 and img.max() <= 1.0


def test_mixed_modes_sizes_and_list_captions(mixed_data):
    dataset = HFDataset(mixed_data, pipeline=PIPELINE)
    assert len(dataset) == 6
    for i in range(len(dataset)):
        sample = dataset[i]["inputs"]
        assert sample["img"].shape == (3, 32, 32)
        if i % 2:
            assert sample["text"] in (f"picture {i}", f"image {i}")
        else:
            assert sample["text"] == f"photo {i}"


def test_metadata_csv_and_data_file(tmp_path, shapes_data):
    folder = tmp_path / "csvfolder"
    folder.mkdir()
    with open(os.path.join(shapes_data, "metadata.jsonl")) as f:
        rows = [json.loads(line) for line in f][:3]
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "caption"])
        writer.writeheader()
        for row in rows:
            os.link(os.path.join(shapes_data, row["file_name"]),
                    folder / row["file_name"])
            writer.writerow({"file_name": row["file_name"],
                             "caption": row["text"]})
    dataset = HFDataset(str(folder), caption_column="caption", pipeline=PIPELINE)
    assert [dataset[i]["inputs"]["text"] for i in range(3)] == [
        r["text"] for r in rows]

    # a data file whose image column holds paths relative to the file
    data_file = tmp_path / "captions.jsonl"
    with open(data_file, "w") as f:
        for row in rows:
            f.write(json.dumps({
                "path": os.path.join("csvfolder", row["file_name"]),
                "prompt": row["text"]}) + "\n")
    dataset = HFDataset(str(data_file), image_column="path",
                        caption_column="prompt", pipeline=PIPELINE)
    assert dataset[2]["inputs"]["text"] == rows[2]["text"]
    assert dataset[2]["inputs"]["img"].shape == (3, 32, 32)


def test_missing_caption_column_lists_the_columns(shapes_data):
    with pytest.raises(ConfigError, match=r"caption_column='en_text' is not a "
                       r"column of .*; its columns are \['image', 'text'\]"):
        HFDataset(shapes_data, caption_column="en_text")


def test_empty_and_non_string_captions(tmp_path, shapes_data):
    data_file = tmp_path / "bad.jsonl"
    image = os.path.join(shapes_data, "0000.png")
    with open(data_file, "w") as f:
        f.write(json.dumps({"image": image, "text": "  "}) + "\n")
        f.write(json.dumps({"image": image, "text": None}) + "\n")
    dataset = HFDataset(str(data_file), pipeline=PIPELINE)
    for i in range(2):
        with pytest.raises(DataError) as err:
            dataset.caption_at(i)
        assert str(err.value) == (
            f"{image}: its caption ('text' in {data_file}) is empty; write "
            "one, or remove the row.")
    # every image bad is an error, whatever max_bad_images allows
    with pytest.raises(DataError, match=r"1 of 1 images of .* cannot be used"):
        dataset.preflight()


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        HFDataset(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty.csv"
    empty.write_text("image,text\n")
    with pytest.raises(DataError, match="has no rows"):
        HFDataset(str(empty))


CACHED_PIPELINE = tiny_pipeline(flip=True)


@pytest.fixture(scope="module")
def encoder(tiny_sd):
    return StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS))


def cached_dataset(data, encoder, folder, pipeline=CACHED_PIPELINE):
    dataset = HFDataset(data, pipeline=pipeline, cache_latents=True)
    dataset.build_latent_cache(encoder.encode_images,
                               encoder.latent_encoder_id(), str(folder))
    return dataset


def test_cached_samples_hold_the_latents_of_their_images(
        tmp_path, shapes_data, encoder):
    cached = cached_dataset(shapes_data, encoder, tmp_path)
    uncached = HFDataset(shapes_data, pipeline=CACHED_PIPELINE)
    flips = set()
    for index, seed in [(0, 11), (0, 12), (5, 13), (23, 14), (7, 15)]:
        sample = cached[index, seed]["inputs"]
        image = uncached[index, seed]["inputs"]
        assert sample.keys() == {"latents", "text", "seed"}
        assert sample["text"] == image["text"] and sample["seed"] == seed
        torch.testing.assert_close(
            sample["latents"], encoder.encode_images(image["img"][None])[0])
        flips.add(torch.equal(cached.latent_cache.load(
            cached._latent_keys[index])["latents"][1], sample["latents"]))
    assert flips == {False, True}  # both views were picked


def test_latent_cache_is_reused_and_keyed_by_settings(
        tmp_path, shapes_data, encoder):
    cached_dataset(shapes_data, encoder, tmp_path)
    files = sorted(tmp_path.glob("*/*.safetensors"))
    assert len(files) == 24
    mtimes = [f.stat().st_mtime_ns for f in files]
    log_file = tmp_path / "run.log"
    MMLogger.get_instance("cache-reuse-test", log_file=str(log_file))
    cached_dataset(shapes_data, encoder, tmp_path)  # another run
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert ("cache_latents: 0 images encoded (2 views each), 24 reused"
            in log_file.read_text())
    bigger = [dict(t, size=48) if "size" in t else t for t in CACHED_PIPELINE]
    cached_dataset(shapes_data, encoder, tmp_path, bigger)
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 48


def test_samples_need_the_cache_built_first(shapes_data):
    dataset = HFDataset(shapes_data, pipeline=CACHED_PIPELINE,
                        cache_latents=True)
    with pytest.raises(RuntimeError, match="call build_latent_cache"):
        dataset[0]


def test_an_unreadable_image_is_skipped_with_the_cache(
        tmp_path, shapes_data, encoder):
    folder = tmp_path / "data"
    folder.mkdir()
    with open(os.path.join(shapes_data, "metadata.jsonl")) as f:
        rows = [json.loads(line) for line in f][:3]
    for row in rows:
        os.link(os.path.join(shapes_data, row["file_name"]),
                folder / row["file_name"])
    (folder / "0001.png").unlink()
    (folder / "0001.png").write_bytes(b"not a png")
    with open(folder / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    dataset = HFDataset(str(folder), pipeline=CACHED_PIPELINE,
                        cache_latents=True, max_bad_fraction=0.5)
    dataset.build_latent_cache(encoder.encode_images,
                               encoder.latent_encoder_id(),
                               str(tmp_path / "cache"))
    assert dataset.bad_rows == {1}
    # the next row takes its place, as without the cache
    assert dataset[1, 5]["inputs"]["text"] == rows[2]["text"]


def test_imagefolder_with_txt_files_beside_the_images(tmp_path, shapes_data):
    # .txt files outnumbering the images must not turn it into a text dataset
    shutil.copytree(shapes_data, tmp_path / "folder")
    for name in os.listdir(tmp_path / "folder"):
        if name.endswith(".png"):
            (tmp_path / "folder" / name.replace(".png", ".txt")).write_text("x")
    (tmp_path / "folder" / "notes.txt").write_text("x")
    dataset = HFDataset(str(tmp_path / "folder"), pipeline=PIPELINE)
    assert len(dataset) == 24
    assert dataset[0]["inputs"]["text"] == "a red circle on a white background"
