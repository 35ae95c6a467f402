"""DiffEngineRunner: multi-process, resume after kills, faults, bad input."""
import errno
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffengine.engine import checkpoint as checkpoint_module
from diffengine.engine.checkpoint import load_checkpoint_file
from tests.conftest import NO_VALIDATION, REPO
from tools.train import main

DEMO = os.path.join(REPO, "configs", "stable_diffusion_lora", "tiny_sd_lora_demo.py")
TRAIN = os.path.join(REPO, "tools", "train.py")
# 24 images, batch 4: 6 iterations an epoch; 3 epochs; a checkpoint every
# iteration, so that a kill can land anywhere, mid-epoch included.
SCHEDULE = [
    "train_cfg.max_epochs=3",
    "custom_hooks=[]",
    "default_hooks.checkpoint.by_epoch=False",
    "default_hooks.checkpoint.interval=1",
    "default_hooks.checkpoint.max_keep_ckpts=3",
    "default_hooks.logger.interval=1",
    *NO_VALIDATION,
]
LAST_STEP = "step18"


def options(tiny_sd, data, work_dir, *extra):
    return ["--cfg-options", f"model.model={tiny_sd}",
            f"train_dataloader.dataset.dataset={data}",
            f"work_dir={work_dir}", *SCHEDULE, *extra]


def train_command(*args):
    return [sys.executable, TRAIN, DEMO, *args]


def lora_weights(work_dir, step=LAST_STEP):
    """The tensors of a step folder, and its file split into header and data.

    The header is compared parsed: safetensors writes its metadata keys in
    hash order, which differs between processes.
    """
    path = os.path.join(work_dir, step, "pytorch_lora_weights.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    size = int.from_bytes(data[:8], "little")
    return load_file(path), (json.loads(data[8:8 + size]), data[8 + size:])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_sd, shapes_data):
    """The reference: the same run, never stopped."""
    work_dir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(train_command(*options(tiny_sd, shapes_data, work_dir)),
                   check=True, capture_output=True)
    return lora_weights(work_dir)


def run_until_checkpoint(command, work_dir, iteration, timeout=300):
    """Start ``command``; return it once ``iter_{iteration}.pth`` exists."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    target = os.path.join(work_dir, f"iter_{iteration}.pth")
    deadline = time.time() + timeout
    while not os.path.exists(target):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    return process


def assert_identical(work_dir, reference, step=LAST_STEP):
    tensors, (header, data) = lora_weights(work_dir, step)
    ref_tensors, (ref_header, ref_data) = reference
    assert tensors.keys() == ref_tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(value, ref_tensors[key]), key
    # The same tensors at the same offsets, the same adapter config, and
    # byte-identical tensor data; the training metadata names the work dir.
    metadata, ref_metadata = header["__metadata__"], ref_header["__metadata__"]
    assert {k: v for k, v in header.items() if k != "__metadata__"} == {
        k: v for k, v in ref_header.items() if k != "__metadata__"}
    assert metadata["lora_adapter_metadata"] == ref_metadata[
        "lora_adapter_metadata"]
    assert metadata["diffengine.step"] == ref_metadata["diffengine.step"]
    assert data == ref_data


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(
        tmp_path, tiny_sd, shapes_data, uninterrupted):
    kill_at = random.Random(os.getpid()).randint(2, 15)
    args = options(tiny_sd, shapes_data, tmp_path)
    process = run_until_checkpoint(train_command(*args), tmp_path, kill_at)
    process.kill()
    process.wait()
    # Saves are atomic, so the newest checkpoint is complete; truncate it as
    # a disk fault would: resume must fall back to the one before.
    newest = max(glob.glob(str(tmp_path / "*.pth")), key=os.path.getmtime)
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    result = subprocess.run(train_command(*args, "--resume"),
                            capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f"cannot load checkpoint {newest}" in log
    assert "trying an older checkpoint" in log
    assert_identical(tmp_path, uninterrupted)
    # no temporary files left behind
    assert not glob.glob(str(tmp_path / ".*tmp*"))


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_exact(
        tmp_path, tiny_sd, shapes_data, uninterrupted):
    args = options(tiny_sd, shapes_data, tmp_path,
                   "default_hooks.checkpoint.interval=100")
    # interval 100: only the signal makes a mid-run checkpoint
    process = subprocess.Popen(train_command(*args), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log = ""
    for line in process.stdout:
        log += line
        if "Epoch(train) [1][4/6]" in line:
            process.send_signal(signal.SIGTERM)
    assert process.wait() == 128 + signal.SIGTERM, log[-3000:]
    saved = (tmp_path / "last_checkpoint").read_text().strip()
    assert "stopped by SIGTERM after saving" in log and saved in log
    iteration = int(os.path.basename(saved)[len("iter_"):-len(".pth")])
    assert 4 <= iteration < 18
    assert (tmp_path / f"step{iteration}").is_dir()
    result = subprocess.run(train_command(*args, "--resume", saved),
                            capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "resuming epoch" in log  # mid-epoch, without replaying batches
    assert_identical(tmp_path, uninterrupted)


def test_two_processes_match_one_with_the_double_batch(tmp_path, tiny_sd,
                                                       shapes_data):
    mim = os.path.join(os.path.dirname(sys.executable), "mim")
    common = [f"model.model={tiny_sd}",
              f"train_dataloader.dataset.dataset={shapes_data}",
              "train_cfg.max_epochs=2", "custom_hooks=[]",
              "default_hooks.checkpoint.interval=1", *NO_VALIDATION,
              # the rate these batch splits were measured at (the demo's
              # 2e-3 turns fp32 rounding into 1.5e-5)
              "optim_wrapper.optimizer.lr=1e-3"]
    subprocess.run([mim, "train", "diffengine", DEMO, "--gpus", "2",
                    "--launcher", "pytorch", "--cfg-options", *common,
                    f"work_dir={tmp_path / 'two'}",
                    "train_dataloader.batch_size=4"],
                   check=True, capture_output=True)
    subprocess.run([mim, "train", "diffengine", DEMO, "--cfg-options", *common,
                    f"work_dir={tmp_path / 'one'}",
                    "train_dataloader.batch_size=8"],
                   check=True, capture_output=True)
    # 24 images: 3 iterations an epoch either way
    two, _ = lora_weights(tmp_path / "two", "step6")
    one, _ = lora_weights(tmp_path / "one", "step6")
    start = load_checkpoint_file(str(tmp_path / "one" / "epoch_1.pth"))
    assert two.keys() == one.keys()
    assert max((two[k] - one[k]).abs().max().item() for k in one) <= 1e-5
    moved = max((v - start["state_dict"][k]).abs().max().item()
                for k, v in load_checkpoint_file(
                    str(tmp_path / "one" / "epoch_2.pth"))["state_dict"].items())
    assert moved > 1e-4  # the weights did train
    # only rank 0 wrote: one log folder, one set of checkpoints
    assert len(glob.glob(str(tmp_path / "two" / "2*"))) == 1


def train_error(capsys, tiny_sd, data, work_dir, *extra):
    """Run tools/train.py's main; its exit code and its stderr lines.

    A user error is one ``diffengine: error:`` line, the last (progress bars
    of the model loading may come before it).
    """
    code = main([DEMO, *options(tiny_sd, data, work_dir, *extra)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert [x for x in lines if x.startswith("diffengine")] == lines[-1:]
    assert lines[-1].startswith("diffengine: error: ")
    return code, lines


def test_missing_caption_column_is_one_clear_line(tmp_path, tiny_sd,
                                                  shapes_data):
    result = subprocess.run(train_command(*options(
        tiny_sd, shapes_data, tmp_path,
        "train_dataloader.dataset.caption_column=en_text")),
        capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    err = result.stderr.strip().splitlines()
    assert [x for x in err if x.startswith("diffengine")] == err[-1:]
    assert "caption_column='en_text' is not a column" in err[-1]
    assert "['image', 'text']" in err[-1]
    assert not glob.glob(str(tmp_path / "*.pth"))


def test_bad_model_path_and_lora_option(tmp_path, capsys, tiny_sd, shapes_data):
    code, err = train_error(capsys, str(tmp_path / "nowhere"), shapes_data,
                            tmp_path / "a")
    assert code == 1 and "is neither a folder nor a hub id" in err[-1]
    code, err = train_error(capsys, tiny_sd, shapes_data, tmp_path / "b",
                            "model.unet_lora_config.lora_alfa=4")
    assert code == 1 and "Did you mean 'lora_alpha'?" in err[-1]
    code, err = train_error(capsys, tiny_sd, shapes_data, tmp_path / "c",
                            "model.unet_lora_config.target_modules=[to_z]")
    assert code == 1 and "entry 'to_z' matches no layer" in err[-1]


def test_unwritable_work_dir(tmp_path, capsys, tiny_sd, shapes_data):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = train_error(capsys, tiny_sd, shapes_data, blocker / "work")
    assert code == 1
    assert f"work_dir='{blocker / 'work'}' cannot be written" in err[-1]


@pytest.fixture()
def corrupt_data(tmp_path, shapes_data):
    """The shapes folder plus one truncated image: 1 bad row of 25 (4%)."""
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for name in os.listdir(shapes_data):
        if name.endswith(".png"):
            os.link(os.path.join(shapes_data, name), folder / name)
    data = Path(shapes_data, "0000.png").read_bytes()
    (folder / "broken.png").write_bytes(data[:100])
    metadata = Path(shapes_data, "metadata.jsonl").read_text()
    (folder / "metadata.jsonl").write_text(
        metadata + '{"file_name": "broken.png", "text": "broken"}\n')
    return folder


def test_bad_image_is_skipped_and_counted(tmp_path, tiny_sd, corrupt_data):
    result = subprocess.run(train_command(*options(
        tiny_sd, corrupt_data, tmp_path / "work", "train_cfg.max_epochs=1")),
        capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert (f"pre-flight: skipped 1 of 25 images of '{corrupt_data}' (1 row): "
            "broken.png: unreadable (") in log


def test_too_many_bad_images_is_an_error(tmp_path, capsys, tiny_sd,
                                         corrupt_data):
    code, err = train_error(capsys, tiny_sd, corrupt_data, tmp_path / "work",
                            "train_dataloader.dataset.max_bad_fraction=0.01",
                            "train_dataloader.dataset.max_bad_images=0")
    assert code == 1
    assert (f"1 of 25 images of '{corrupt_data}' cannot be used, more than "
            "the 0 that max_bad_images=0 and max_bad_fraction=0.01 allow: "
            "broken.png: unreadable (") in err[-1]


def test_every_bad_file_is_named_before_the_first_step(tmp_path, capsys,
                                                       tiny_sd, corrupt_data):
    (corrupt_data / "notes.png").write_text("not an image")
    with open(corrupt_data / "metadata.jsonl", "a") as f:
        f.write('{"file_name": "notes.png", "text": "notes"}\n')
        f.write('{"file_name": "0001.png", "text": "  "}\n')
    code, err = train_error(capsys, tiny_sd, corrupt_data, tmp_path / "work")
    assert code == 1
    assert err[-1].startswith(
        f"diffengine: error: 3 of 26 images of '{corrupt_data}' cannot be "
        "used, more than the 2 that max_bad_images=2 and max_bad_fraction="
        "0.05 allow: broken.png: unreadable (")
    assert err[-1].endswith(
        "; notes.png: unreadable (cannot identify image file 'notes.png'); "
        "0001.png: its caption ('text' in metadata.jsonl) is empty; write "
        "one, or remove the row. Fix or remove them, or raise "
        "max_bad_images.")
    assert not glob.glob(str(tmp_path / "work" / "*.pth"))


def test_nan_loss_stops_before_any_nan_weight(tmp_path, capsys, tiny_sd,
                                              shapes_data):
    code, err = train_error(capsys, tiny_sd, shapes_data, tmp_path,
                            "optim_wrapper.optimizer.lr=1e36")
    assert code == 1
    assert "the loss is" in err[-1] and "at iteration" in err[-1]
    last = (tmp_path / "last_checkpoint").read_text().strip()
    assert f"last good checkpoint is {last}" in err[-1]
    for path in glob.glob(str(tmp_path / "step*" / "*.safetensors")):
        assert all(torch.isfinite(v).all() for v in load_file(path).values())


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(
        tmp_path, tiny_sd, shapes_data, monkeypatch, capsys):
    code = main([DEMO, *options(tiny_sd, shapes_data, tmp_path,
                                "train_cfg.max_epochs=1")])
    assert code == 0, capsys.readouterr().err[-3000:]
    checkpoint_files = [str(tmp_path / "last_checkpoint"), *glob.glob(
        str(tmp_path / "*.pth")), *glob.glob(str(tmp_path / "step*" / "*"))]
    before = {p: Path(p).read_bytes() for p in checkpoint_files}
    real_save = torch.save

    def fill_disk(obj, path):
        real_save(obj, path)  # a partial file is on disk when it fails
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", fill_disk)
    with pytest.raises(OSError, match="No space left"):
        main([DEMO, *options(tiny_sd, shapes_data, tmp_path,
                             "train_cfg.max_epochs=2", "--resume")])
    after = {p: Path(p).read_bytes() for p in checkpoint_files}
    assert after == before  # last_checkpoint, every .pth and step untouched
    assert sorted(glob.glob(str(tmp_path / "*.pth"))) == sorted(
        p for p in checkpoint_files if p.endswith(".pth"))
    assert not glob.glob(str(tmp_path / ".*tmp*"))
    newest = max(glob.glob(str(tmp_path / "*.pth")), key=os.path.getmtime)
    assert load_checkpoint_file(newest)["meta"]["iter"] == 6
