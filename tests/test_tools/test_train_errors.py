"""Training mistakes users reported, each one line naming the config key or
file and the fix: values that peft, torch or the DataLoader would refuse
only after the model loaded, mistyped names, checkpoints that do not load,
an empty data folder, a hub id without network."""
import glob
import os
import subprocess
import sys

import pytest

from diffengine.engine.checkpoint import CheckpointLoadError
from diffengine.engine.config_check import check_config
from diffengine.errors import ConfigError, DiffEngineError
from tests.conftest import NO_VALIDATION, REPO
from tools.train import main

DEMO = os.path.join(REPO, "configs", "stable_diffusion_lora",
                    "tiny_sd_lora_demo.py")
SEED = os.path.join(REPO, "configs", "stable_diffusion_lora",
                    "stable_diffusion_v15_lora_pokemon_blip.py")


def train_line(capsys, *argv):
    """tools/train.py's status and its one ``diffengine: error:`` line."""
    status = main(list(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert [x for x in lines if x.startswith("diffengine")] == lines[-1:]
    return status, lines[-1]


# Found before the model loads: the demo's model and data need not exist.
@pytest.mark.parametrize("option, line", [
    ("model.unet_lora_config.r=0",
     "model.unet_lora_config.r=0: must be a positive integer, e.g. 8."),
    ("model.unet_lora_config.rnak=8",
     "model.unet_lora_config.rnak is not an option of peft's LoraConfig. "
     "Did you mean 'r'?"),
    ("model.unet_lora_config.lora_dropout=1.5",
     "model.unet_lora_config.lora_dropout=1.5: must be a probability in "
     "[0, 1)."),
    ("optim_wrapper.optimizer.lr=-1e-3",
     "optim_wrapper.optimizer.lr=-0.001: Invalid learning rate: -0.001"),
    ("optim_wrapper.optimizer.weight_decy=0.1",
     "optim_wrapper.optimizer.weight_decy is not an option of AdamW. Did "
     "you mean 'weight_decay'?"),
    ("train_dataloader.batch_szie=2",
     "train_dataloader.batch_szie: unknown option of a data loader. Did you "
     "mean 'batch_size'?"),
    ("train_dataloader.batch_size=0",
     "train_dataloader.batch_size=0: must be a positive integer."),
    ("train_dataloader.dataset.type=KohyaFolderDatset",
     "train_dataloader.dataset.type='KohyaFolderDatset' is not a registered "
     "dataset. Did you mean 'KohyaFolderDataset'?"),
    ("train_dataloader.dataset.pipeline.0.sise=64",
     "train_dataloader.dataset.pipeline.0.sise is not an option of "
     "ResizeShortestEdge. Did you mean 'size'?"),
    ("custom_hooks.0.intervall=5",
     "custom_hooks.0.intervall is not an option of VisualizationHook. Did "
     "you mean 'interval'?"),
    ("train_cfg.max_epoch=1",
     "train_cfg.max_epoch is not an option of ResumableEpochTrainLoop. Did "
     "you mean 'max_epochs'?"),
    ("model.losss=None",
     "model.losss is not an option of StableDiffusion. Did you mean 'loss'?"),
])
def test_config_mistake_is_named_by_its_key(option, line, tmp_path, capsys):
    status, last = train_line(capsys, DEMO, "--work-dir", str(tmp_path),
                              "--cfg-options", option)
    assert status == 1 and last == f"diffengine: error: {line}"


def test_a_validation_loss_with_dropped_text_encoders_is_one_line(
        tmp_path, capsys):
    status, last = train_line(
        capsys, DEMO, "--work-dir", str(tmp_path), "--cfg-options",
        "model.cache_text_embeddings=True",
        "model.drop_text_encoders_after_caching=True")
    assert status == 1 and last == (
        "diffengine: error: model.drop_text_encoders_after_caching=True "
        "frees the text encoders before the first step, but val_cfg "
        "computes a validation loss, whose captions need them: set "
        "val_dataloader=None val_cfg=None val_evaluator=None, or drop the "
        "option.")


def test_every_leaf_config_passes_the_checks():
    from mmengine.config import Config

    configs = [p for p in glob.glob(os.path.join(REPO, "configs", "**",
                                                 "*.py"), recursive=True)
               if f"{os.sep}_base_{os.sep}" not in p]
    assert DEMO in configs and SEED in configs
    for config in configs:
        check_config(Config.fromfile(config).to_dict())


def test_resume_from_a_damaged_checkpoint(tmp_path, capsys, tiny_sd,
                                          shapes_data):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    status, last = train_line(
        capsys, DEMO, "--resume", str(bad), "--cfg-options",
        f"model.model={tiny_sd}", f"train_dataloader.dataset.dataset="
        f"{shapes_data}", f"work_dir={tmp_path / 'work'}", "custom_hooks=[]",
        *NO_VALIDATION)
    assert status == 1
    assert last.startswith(f"diffengine: error: cannot load checkpoint {bad}:")
    # the runner's fallback to an older checkpoint catches it still
    assert issubclass(CheckpointLoadError, DiffEngineError)


def test_empty_dataset_folder(tmp_path, capsys, tiny_sd):
    empty = tmp_path / "photos"
    empty.mkdir()
    status, last = train_line(
        capsys, DEMO, "--cfg-options", f"model.model={tiny_sd}",
        f"train_dataloader.dataset.dataset={empty}",
        f"work_dir={tmp_path / 'work'}", "custom_hooks=[]", *NO_VALIDATION)
    assert status == 1
    assert last == (
        f"diffengine: error: dataset '{empty}' holds no data files: add "
        "images with a metadata.jsonl of captions, or use type="
        "'KohyaFolderDataset' for images beside .txt captions.")


def offline_train(tmp_path, *options):
    """The seed config in a process without network access to the hub and
    with an empty cache."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train.py"), SEED,
         "--work-dir", str(tmp_path / "work"), *options], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=600)


def test_hub_ids_without_network_or_cache(tmp_path, tiny_sd):
    result = offline_train(tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "diffengine: error: 'stable-diffusion-v1-5/stable-diffusion-v1-5' is "
        "a hub id that cannot be downloaded (no network, or "
        "HF_HUB_OFFLINE=1) and is not in the Hugging Face cache; connect "
        "once to cache it, or use a local copy: --cfg-options model.model="
        "/path/to/a/diffusers/folder")
    result = offline_train(tmp_path, "--cfg-options", f"model.model={tiny_sd}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "diffengine: error: 'svjack/pokemon-blip-captions-en-zh' is a hub id "
        "that cannot be downloaded (no network, or HF_HUB_OFFLINE=1) and is "
        "not in the Hugging Face cache; connect once to cache it, or use a "
        "local copy: --cfg-options train_dataloader.dataset.dataset="
        "/path/to/an/image/folder")


@pytest.mark.parametrize("option", ["unet_lora_config",
                                    "transformer_lora_config",
                                    "text_encoder_lora_config"])
def test_every_lora_option_is_checked_before_the_model_loads(option):
    from diffengine.engine.config_check import check_adapters

    with pytest.raises(ConfigError, match=(
            rf"^model\.{option}\.rnak is not an option of peft's LoraConfig\. "
            r"Did you mean 'r'\?$")):
        check_adapters({"type": "StableDiffusion", option: {"rnak": 8}})
