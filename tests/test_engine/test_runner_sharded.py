"""`mim train` under FullyShardWrapper on the tiny Flux, 2 gloo processes:
the adapter of 1 process × the double batch, the step file a DDP run
writes, and a SIGKILL then a resume that ends bit-identical."""
import contextlib
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.test_engine.test_runner import assert_identical, lora_weights

FLUX = os.path.join(REPO, "configs", "flux_lora", "flux_dev_lora_pokemon_blip.py")
MIM = os.path.join(os.path.dirname(sys.executable), "mim")
TWO = ["--gpus", "2", "--launcher", "pytorch"]
SHARDED = ["model_wrapper_cfg.type=FullyShardWrapper"]
# 24 images, 32 px, 8 a step (2 × 4 or 1 × 8): 3 iterations an epoch, 2
# epochs, a checkpoint and a step folder after each; the EMA of the adapters
# is what the step folders hold.
LAST_STEP = "step6"
CONFIG = f"""
_base_ = [{FLUX!r}]
model = dict(max_sequence_length=32)
custom_hooks = [dict(type="LoRAEMAHook", momentum=0.2)]
randomness = dict(seed=0)
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "flux_ema.py"
    path.write_text(CONFIG)
    return str(path)


def command(config, tiny_flux, data, work_dir, batch, *extra):
    return [MIM, "train", "diffengine", config, *extra, "--cfg-options",
            f"model.model={tiny_flux}",
            f"train_dataloader.dataset.dataset={data}",
            "train_dataloader.dataset.caption_column=text",
            "train_dataloader.dataset.pipeline.0.size=32",
            "train_dataloader.dataset.pipeline.1.size=32",
            f"train_dataloader.batch_size={batch}",
            "train_dataloader.num_workers=0", "train_cfg.max_epochs=2",
            "default_hooks.checkpoint.by_epoch=False",
            "default_hooks.checkpoint.interval=1",
            "default_hooks.checkpoint.max_keep_ckpts=3",
            f"work_dir={work_dir}"]


def train(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    return log


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, config, tiny_flux, shapes_data):
    """The uninterrupted sharded run, 2 processes × batch 4: its work dir
    and log."""
    work = tmp_path_factory.mktemp("sharded")
    log = train(command(config, tiny_flux, shapes_data, work, 4, *TWO)
                + SHARDED)
    return work, log


def test_each_process_holds_half_of_the_transformer(sharded):
    _, log = sharded
    assert ("FullyShardWrapper: sharded over 2 processes, each holding 50.0% "
            "of transformer") in log


def test_two_sharded_processes_match_one_with_the_double_batch(
        tmp_path, sharded, config, tiny_flux, shapes_data):
    work, _ = sharded
    train(command(config, tiny_flux, shapes_data, tmp_path, 8))
    two, _ = lora_weights(work, LAST_STEP)
    one, _ = lora_weights(tmp_path, LAST_STEP)
    assert two.keys() == one.keys()
    difference = max((two[k] - one[k]).abs().max().item() for k in one)
    print(f"2 sharded processes × 4 vs 1 × 8: {difference:.2e}")
    assert difference <= 1e-5
    first, _ = lora_weights(tmp_path, "step4")  # the oldest one kept
    assert max((one[k] - first[k]).abs().max().item() for k in one) > 1e-4


def test_the_step_file_is_the_one_ddp_writes(tmp_path, sharded, config,
                                              tiny_flux, shapes_data):
    work, _ = sharded
    train(command(config, tiny_flux, shapes_data, tmp_path, 4, *TWO))
    tensors, (header, _) = lora_weights(work, LAST_STEP)
    ddp, (ddp_header, _) = lora_weights(tmp_path, LAST_STEP)
    # the same tensors (keys, dtypes, shapes, offsets) ...
    assert {k: v for k, v in header.items() if k != "__metadata__"} == {
        k: v for k, v in ddp_header.items() if k != "__metadata__"}
    difference = max((tensors[k] - ddp[k]).abs().max().item() for k in ddp)
    print(f"sharded vs DDP step file: {difference:.2e}")
    assert difference <= 1e-5
    # ... and the same metadata, but for the config (its work_dir and
    # model_wrapper_cfg)
    metadata, ddp_metadata = header["__metadata__"], ddp_header["__metadata__"]
    differing = {k for k in metadata.keys() | ddp_metadata.keys()
                 if metadata.get(k) != ddp_metadata.get(k)}
    assert differing == {"diffengine.training_config"}


def test_sigkill_then_resume_is_bit_identical(tmp_path, sharded, config,
                                              tiny_flux, shapes_data):
    work, _ = sharded
    cmd = command(config, tiny_flux, shapes_data, tmp_path, 4, *TWO) + SHARDED
    # its own session, so that the kill reaches the launcher and the two
    # processes it starts in sessions of their own
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               start_new_session=True)
    target = tmp_path / "iter_2.pth"
    try:
        while not target.exists():
            assert process.poll() is None, "the run ended before iteration 2"
            time.sleep(0.02)
    finally:
        workers = descendants(process.pid)
        for pid in [process.pid, *workers]:
            kill(pid)
        process.wait()
    assert not (tmp_path / LAST_STEP).exists()
    log = train([*cmd, "--resume"])
    assert "resumed from" in log
    assert_identical(tmp_path, lora_weights(work, LAST_STEP),
                     step=LAST_STEP)
    assert not glob.glob(str(tmp_path / ".*tmp*"))


def descendants(pid: int) -> list[int]:
    """The processes that ``pid`` started, and theirs, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
