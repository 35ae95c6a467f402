"""DiffEngineRunner's distributed setup, without a multi-process launch."""
import os

import pytest
import torch.distributed as dist
from mmengine.runner import runner as mmengine_runner

from diffengine.engine import DiffEngineRunner
from diffengine.models import StableDiffusion
from tests.conftest import UNET_TARGETS


class ReachedError(Exception):
    pass


def test_slurm_reaches_mmengine_init_unchanged(tmp_path, monkeypatch):
    calls = []

    def init_dist(launcher, **kwargs):
        calls.append((launcher, kwargs))
        raise ReachedError

    monkeypatch.setattr(mmengine_runner, "init_dist", init_dist)
    with pytest.raises(ReachedError):
        DiffEngineRunner(
            model=dict(type="StableDiffusion", model="x/y",
                       unet_lora_config=dict(target_modules=["to_q"])),
            work_dir=str(tmp_path), launcher="slurm",
            env_cfg=dict(dist_cfg=dict(timeout=1800)))
    assert calls == [("slurm", {"timeout": 1800})]


def test_ddp_leaves_the_frozen_base_out(tmp_path, tiny_sd, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29612")
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0").items():
        monkeypatch.setenv(key, value)
    model = StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS))
    try:
        runner = DiffEngineRunner(model=model, work_dir=str(tmp_path),
                                  launcher="pytorch", default_scope="diffengine")
        assert dist.get_backend() == "gloo"
        wrapped = runner.model
        ignored = wrapped.parameters_to_ignore
        names = dict(model.named_parameters())
        assert ignored == {n for n, p in names.items() if not p.requires_grad} | {
            n for n, _ in model.named_buffers()}
        synced = {n for n in names if n not in ignored}
        assert synced and all("lora_" in n for n in synced)
        assert wrapped.device_ids is None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert os.environ["LOCAL_RANK"] == "0"
