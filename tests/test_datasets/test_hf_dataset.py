import csv
import json
import os
import shutil

import pytest
import torch

from diffengine.datasets import HFDataset
from diffengine.errors import ConfigError, DataError

PIPELINE = [
    dict(type="ResizeShortestEdge", size=32),
    dict(type="CenterCrop", size=32),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]


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
        with pytest.raises(DataError, match=f"row {i} of .* has no usable "
                           "caption in column 'text'"):
            dataset[i]


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        HFDataset(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty.csv"
    empty.write_text("image,text\n")
    with pytest.raises(DataError, match="has no rows"):
        HFDataset(str(empty))


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
