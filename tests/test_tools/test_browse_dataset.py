import os

import numpy as np
from PIL import Image

from diffengine.tools.browse_dataset import main
from tests.conftest import REPO

CONFIG = os.path.join(REPO, "configs", "stable_diffusion_lora",
                      "stable_diffusion_v15_lora_pokemon_blip.py")


def test_browse_dataset_writes_transformed_samples(mixed_data, tmp_path,
                                                   capsys):
    out = tmp_path / "browse"
    main([CONFIG, "--out", str(out), "--num", "3", "--cfg-options",
          f"train_dataloader.dataset.dataset={mixed_data}",
          "train_dataloader.dataset.caption_column=text",
          "train_dataloader.dataset.pipeline.0.size=48",
          "train_dataloader.dataset.pipeline.1.size=40"])
    assert sorted(os.listdir(out)) == [
        "0000.png", "0000.txt", "0001.png", "0001.txt", "0002.png", "0002.txt"]
    # cropped to the config's size, RGB whatever the file was
    image = np.asarray(Image.open(out / "0001.png"))
    assert image.shape == (40, 40, 3) and image.std() > 0
    assert (out / "0000.txt").read_text() == "photo 0\n"
    assert "wrote 3 samples of 40×40" in capsys.readouterr().out


def test_buckets_show_whole_subjects_and_their_buckets(orientation_data,
                                                       tmp_path, capsys):
    config = os.path.join(REPO, "configs", "aspect_ratio_buckets",
                          "stable_diffusion_v15_lora_buckets_imagefolder.py")
    out = tmp_path / "browse"
    main([config, "--out", str(out), "--num", "10", "--cfg-options",
          f"train_dataloader.dataset.dataset={orientation_data}",
          "train_dataloader.dataset.pipeline.0.resolution=48",
          "train_dataloader.dataset.pipeline.0.min_bucket_reso=16",
          "train_dataloader.dataset.pipeline.0.max_bucket_reso=96",
          "train_dataloader.dataset.pipeline.0.bucket_reso_steps=8"])
    printed = capsys.readouterr().out
    assert ("0000.png  24×80 bucket, from a 30×90 image  'a framed "
            "picture 0'") in printed
    assert "0003.png  80×24 bucket, from a 90×30 image" in printed
    assert "0006.png  56×40 bucket, from a 64×48 image" in printed
    assert "wrote 10 samples of 24×80, 48×48, 56×40, 80×24" in printed
    for index in range(10):
        image = np.asarray(Image.open(out / f"{index:04d}.png")).astype(int)
        # the red frame of every picture shows along all four edges
        red = (np.abs(image - [255, 0, 0]).max(-1) < 40)
        for edge in (red[0], red[-1], red[:, 0], red[:, -1]):
            assert edge.mean() > 0.9, index
