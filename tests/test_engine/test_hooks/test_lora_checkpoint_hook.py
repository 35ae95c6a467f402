"""LoRACheckpointHook on a real runner, and ``make_runner``: the runner
the hook tests train, built from a Config as ``mim train`` builds it."""
import glob
import json
import os

import torch
from mmengine.config import Config
from safetensors.torch import load_file

import diffengine.engine  # noqa: F401  (registers the hooks)
from diffengine.adapter_file import read_adapter_file
from diffengine.engine import DiffEngineRunner
from diffengine.engine.checkpoint import load_checkpoint_file
from tests.conftest import tiny_train_config


def make_runner(work_dir, tiny_sd, shapes_data, custom_hooks=(), model=None,
                **checkpoint):
    # from a Config, as `mim train` builds it: the runner reads runner.cfg
    return DiffEngineRunner.from_cfg(Config(tiny_train_config(
        work_dir, tiny_sd, shapes_data, model=model,
        train_cfg=dict(by_epoch=False, max_iters=6),
        default_hooks=dict(checkpoint=dict(
            type="LoRACheckpointHook", by_epoch=False, **checkpoint)),
        custom_hooks=list(custom_hooks),
        randomness=dict(seed=0),
        experiment_name=os.path.basename(str(work_dir)),
    )))


def test_lora_checkpoint_hook_writes_and_rotates_step_dirs(
        tmp_path, tiny_sd, shapes_data):
    runner = make_runner(tmp_path, tiny_sd, shapes_data, interval=2,
                         max_keep_ckpts=2)
    runner.train()
    assert sorted(glob.glob(str(tmp_path / "step*"))) == [
        str(tmp_path / "step4"), str(tmp_path / "step6")]
    assert sorted(os.path.basename(p) for p in glob.glob(
        str(tmp_path / "*.pth"))) == ["iter_4.pth", "iter_6.pth"]
    # the step dir holds the model's current adapters
    saved = load_file(str(tmp_path / "step6" / "pytorch_lora_weights.safetensors"))
    current = runner.model.lora_state_dicts()["unet"]
    assert set(saved) == {f"unet.{k}" for k in current}
    for key, value in current.items():
        torch.testing.assert_close(saved[f"unet.{key}"], value)
    # the step file tells how it was trained, for export_lora
    training = read_adapter_file(str(tmp_path / "step6")).training
    assert {k: training[k] for k in ("step", "epoch", "max_steps",
                                     "num_train_images", "resolution",
                                     "dataset", "base_model")} == {
        "step": "6", "epoch": "0", "max_steps": "6", "num_train_images": "24",
        "resolution": "32x32", "dataset": shapes_data, "base_model": tiny_sd}
    assert json.loads(training["training_config"])["train_cfg"] == {
        "by_epoch": False, "max_iters": 6}
    # the .pth holds the adapters, not the frozen base
    checkpoint = load_checkpoint_file(str(tmp_path / "iter_6.pth"))
    assert checkpoint["state_dict"] and all(
        "lora_" in k for k in checkpoint["state_dict"])
    assert "optimizer" in checkpoint
