"""DiffEngineRunner's setup (distributed, data loaders, latent cache),
without a multi-process launch."""
import os

import pytest
import torch.distributed as dist
from mmengine.runner import runner as mmengine_runner

from diffengine.datasets import HFDataset
from diffengine.engine import DiffEngineRunner
from diffengine.models import StableDiffusion
from tests.conftest import UNET_TARGETS, tiny_pipeline, tiny_train_config


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


def runner_for(work_dir, tiny_sd, shapes_data, cache):
    cfg = tiny_train_config(
        work_dir, tiny_sd, shapes_data,
        model=dict(cache_text_embeddings=cache),
        dataset=dict(cache_latents=cache, pipeline=tiny_pipeline(flip=True)),
        sampler=dict(type="DeterministicSampler", shuffle=True),
        train_cfg=dict(by_epoch=False, max_iters=1),
        randomness=dict(seed=0),
        default_hooks=dict(checkpoint=dict(
            type="LoRACheckpointHook", by_epoch=False, interval=10)),
        experiment_name=f"{os.path.basename(str(work_dir))}-{cache}")
    return DiffEngineRunner(**cfg)


def first_loss(runner):
    runner.train()
    return runner.message_hub.get_scalar("train/loss").current()


def test_cached_and_uncached_training_give_the_same_loss_at_step_0(
        tmp_path, tiny_sd, shapes_data):
    # the same batch (seeded sampler) and the same per-sample noise
    uncached = first_loss(runner_for(tmp_path / "a", tiny_sd, shapes_data,
                                     cache=False))
    runner = runner_for(tmp_path / "b", tiny_sd, shapes_data, cache=True)
    cached = first_loss(runner)
    assert cached == pytest.approx(uncached, rel=1e-6)
    assert len(runner.model.text_embeddings) == 2
    assert len(list((tmp_path / "b" / "latent_cache").glob("*/*"))) == 24


def test_dataloaders_default_to_persistent_workers(shapes_data):
    def build(**options):
        return DiffEngineRunner.build_dataloader(dict(
            batch_size=2, sampler=dict(type="DefaultSampler"),
            dataset=HFDataset(shapes_data), **options))

    loader = build(num_workers=1)
    assert loader.persistent_workers and not loader.pin_memory  # no CUDA
    assert not build(num_workers=0).persistent_workers
    assert not build(num_workers=1, persistent_workers=False).persistent_workers
