import errno
import os
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub

from diffengine.adapter_file import read_adapter_file
from diffengine.engine import DiffEngineRunner
from diffengine.engine import checkpoint as ckpt
from tests.conftest import tiny_train_config


def test_message_hub_round_trips_as_plain_data(tmp_path):
    hub = MessageHub("test-plain")
    for i in range(5):
        hub.update_scalar("train/loss", float(i), count=2)
    hub.update_info("iter", np.int64(7))
    path = str(tmp_path / "c.pth")
    ckpt.atomic_save({"message_hub": ckpt.to_plain(hub.state_dict())}, path)
    # loads with weights_only=True, no allow-list
    loaded = ckpt.load_checkpoint_file(path)["message_hub"]
    buffer = loaded["log_scalars"]["train/loss"]
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.data[0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert buffer.data[1].tolist() == [2, 2, 2, 2, 2]
    assert loaded["runtime_info"]["iter"] == 7


def test_plain_mmengine_checkpoint_is_refused_not_unpickled(tmp_path):
    path = str(tmp_path / "mmengine.pth")
    torch.save({"message_hub": {"loss": HistoryBuffer([1.0], [1])}}, path)
    with pytest.raises(ckpt.CheckpointLoadError, match=r"cannot load "
                       r"checkpoint .*mmengine\.pth: UnpicklingError"):
        ckpt.load_checkpoint_file(path)


def test_truncated_checkpoint_is_named(tmp_path):
    path = str(tmp_path / "t.pth")
    ckpt.atomic_save({"w": torch.ones(1000)}, path)
    with open(path, "r+b") as f:
        f.truncate(300)
    with pytest.raises(ckpt.CheckpointLoadError, match=r"t\.pth"):
        ckpt.load_checkpoint_file(path)


def test_rng_state_round_trip():
    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pth")
    ckpt.atomic_save({"v": torch.tensor(1)}, path)

    def full_disk(obj, target):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ckpt.atomic_save({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint_file(path)["v"].item() == 1
    assert os.listdir(tmp_path) == ["c.pth"]


def test_a_run_on_cached_latents_records_the_resolution_of_one_on_images(
        tmp_path, tiny_sd, shapes_data):
    """The resolution comes from the pipeline, not from the batches, which
    hold latents and no image when they are cached."""
    resolutions = []
    for cache in (False, True):
        work_dir = tmp_path / f"cache_{cache}"
        DiffEngineRunner.from_cfg(Config(tiny_train_config(
            work_dir, tiny_sd, shapes_data,
            dataset=dict(cache_latents=cache),
            train_cfg=dict(by_epoch=False, max_iters=1),
            default_hooks=dict(checkpoint=dict(
                type="LoRACheckpointHook", by_epoch=False, interval=1)),
            experiment_name=f"resolution_cache_{cache}",
        ))).train()
        training = read_adapter_file(str(work_dir / "step1")).training
        resolutions.append(training.get("resolution"))
    assert resolutions == ["32x32", "32x32"]
