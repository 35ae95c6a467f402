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
