"""Validation loss at fixed noise and timesteps: per sample, repeatable,
the same with 1 or 2 processes, in scalars.json and TensorBoard."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from mmengine.dataset import pseudo_collate

from diffengine.datasets import HFDataset
from diffengine.engine import DenoisingLossMetric
from diffengine.models import Flux, StableDiffusion, StableDiffusion3
from tests.conftest import (
    REPO,
    SD3_TARGETS,
    UNET_TARGETS,
    perturb_lora,
    tiny_pipeline,
)
from tests.test_engine.test_runner import DEMO

MIM = os.path.join(os.path.dirname(sys.executable), "mim")


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_validation_loss_depends_on_the_sample_alone(family, request,
                                                     shapes_data):
    if family == "sd3":  # flow matching: timestep t is the level σ = t/1000
        model = StableDiffusion3(
            request.getfixturevalue("tiny_sd3"), max_sequence_length=16,
            transformer_lora_config=dict(r=2, target_modules=SD3_TARGETS))
    elif family == "flux":  # flow matching too, with packed latents
        model = Flux(
            request.getfixturevalue("tiny_flux"), max_sequence_length=16,
            transformer_lora_config=dict(r=2, target_modules=SD3_TARGETS))
    else:
        model = StableDiffusion(
            request.getfixturevalue("tiny_sd"),
            unet_lora_config=dict(r=2, target_modules=UNET_TARGETS))
    perturb_lora(model)
    dataset = HFDataset(shapes_data, pipeline=tiny_pipeline())
    samples = [dataset[(i, 100 + i)] for i in range(4)]
    batch = model.data_preprocessor(pseudo_collate(samples))["inputs"]
    timesteps = (100, 500, 900)
    losses = model.validation_loss(batch, timesteps)
    assert losses.shape == (4, ) and losses.dtype == torch.float32
    assert torch.equal(model.validation_loss(batch, timesteps), losses)
    for i in range(4):
        alone = model.data_preprocessor(pseudo_collate([samples[i]]))["inputs"]
        assert torch.equal(model.validation_loss(alone, timesteps)[0],
                           losses[i])
    # other noise for another seed, another loss at other timesteps
    other = model.data_preprocessor(pseudo_collate([dataset[(0, 7)]]))[
        "inputs"]
    assert model.validation_loss(other, timesteps)[0] != losses[0]
    assert model.validation_loss(batch, (300, ))[0] != losses[0]
    del batch["seed"]
    with pytest.raises(ValueError, match="needs a seed per sample"):
        model.validation_loss(batch, timesteps)


def test_the_metric_averages_each_sample_once_in_seed_order():
    metric = DenoisingLossMetric()
    # a padded last batch repeats a sample; the order of arrival differs
    metric.process(None, [dict(seed=3, loss=0.5), dict(seed=1, loss=0.25)])
    metric.process(None, [dict(seed=2, loss=1.0), dict(seed=3, loss=0.5)])
    assert metric.compute_metrics(metric.results) == {"loss": 1.75 / 3}
    assert metric.prefix == "val"


CONFIG = """
_base_ = [{demo!r}]
model = dict(model={tiny_sd!r})
pipeline = [
    dict(type="ResizeShortestEdge", size=32),
    dict(type="CenterCrop", size=32),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(dataset=dict(dataset={data!r}, pipeline=pipeline))
val_dataloader = dict(dataset=dict(dataset={data!r}, pipeline=pipeline))
val_cfg = dict(timesteps=[100, 600])
custom_hooks = []
visualizer = dict(vis_backends=[dict(type="LocalVisBackend"),
                                dict(type="TensorboardVisBackend")])
"""


# SD3.5 Medium's (or FLUX.1 [dev]'s) seed config with the demo's
# validation: a quarter of the images held out, their loss at levels σ = 0.1
# and 0.6. T5 reads 16 tokens instead of 256 (512), for speed.
SD3_CONFIG = """
_base_ = [{medium!r}]
model = dict(model={tiny_sd!r}, max_sequence_length=16)
pipeline = [
    dict(type="ResizeShortestEdge", size=32),
    dict(type="CenterCrop", size=32),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]
train_dataloader = dict(num_workers=0, dataset=dict(
    dataset={data!r}, caption_column="text", validation_fraction=0.25,
    pipeline=pipeline))
# `_delete_`: the seed config sets no validation
val_dataloader = dict(_delete_=True, batch_size=4, num_workers=0, dataset=dict(
    type="HFDataset", dataset={data!r}, caption_column="text",
    validation_fraction=0.25, subset="validation", pipeline=pipeline))
val_cfg = dict(_delete_=True, type="ValidationLossLoop", timesteps=[100, 600])
val_evaluator = dict(_delete_=True, type="DenoisingLossMetric")
train_cfg = dict(val_by_epoch=False)
randomness = dict(seed=0)
custom_hooks = []
visualizer = dict(vis_backends=[dict(type="LocalVisBackend"),
                                dict(type="TensorboardVisBackend")])
"""
MEDIUM = os.path.join(REPO, "configs", "stable_diffusion_3_lora",
                      "stable_diffusion_3_5_medium_lora_pokemon_blip.py")
FLUX_DEV = os.path.join(REPO, "configs", "flux_lora",
                        "flux_dev_lora_pokemon_blip.py")


def validation_rows(work_dir):
    log, = glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json"))
    with open(log) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_a_checkpoint_validates_alike_with_1_and_2_processes(
        family, request, tmp_path, shapes_data):
    config = tmp_path / "validated.py"
    template = CONFIG if family == "sd" else SD3_CONFIG
    config.write_text(template.format(
        demo=DEMO, medium=FLUX_DEV if family == "flux" else MEDIUM,
        data=shapes_data, tiny_sd=request.getfixturevalue(
            {"sd": "tiny_sd", "sd3": "tiny_sd3", "flux": "tiny_flux"}[family])))
    # 18 training images (6 held out), batch 2: 9 iterations, validation
    # every 3, then a checkpoint
    common = ["train_cfg.max_epochs=1", "train_cfg.val_interval=3",
              "train_dataloader.batch_size=2", "val_dataloader.batch_size=2"]
    # one thread, as mmengine gives each of several processes: the same
    # reductions, so the same bits (CPU kernels split sums by thread count)
    result = subprocess.run(
        [MIM, "train", "diffengine", str(config), "--cfg-options", *common,
         f"work_dir={tmp_path / 'trained'}"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    trained = validation_rows(tmp_path / "trained")
    assert sorted(trained) == [3, 6, 9]
    assert len(set(trained.values())) == 3  # the weights changed between

    # the last checkpoint, evaluated 3 times by 2 processes (batch 1 each):
    # lr 0 keeps the loaded weights exactly
    checkpoint = tmp_path / "trained" / "epoch_1.pth"
    result = subprocess.run(
        [MIM, "train", "diffengine", str(config), "--gpus", "2", "--launcher",
         "pytorch", "--cfg-options", *common, "optim_wrapper.optimizer.lr=0",
         "train_dataloader.batch_size=1", "val_dataloader.batch_size=1",
         f"load_from={checkpoint}", f"work_dir={tmp_path / 'two'}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    two = validation_rows(tmp_path / "two")
    print(f"val/loss of epoch_1.pth: 1 process {trained[9]!r}, 2 processes "
          f"{sorted(set(two.values()))}")
    assert two == {3: trained[9], 6: trained[9], 9: trained[9]}

    # TensorBoard got the same values under the same tag
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )
    events, = glob.glob(str(tmp_path / "trained" / "*" / "vis_data" /
                            "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    assert {"loss", "val/loss"} <= set(accumulator.Tags()["scalars"])
    logged = {e.step: e.value for e in accumulator.Scalars("val/loss")}
    assert logged == pytest.approx(trained, rel=1e-6)  # TB stores float32
