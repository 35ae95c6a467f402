"""SIGTERM and SIGINT: long work stops within seconds, the run saves."""
import glob
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from diffengine import stop
from diffengine.datasets import HFDataset
from diffengine.datasets.class_images import generate_class_images, list_images
from diffengine.inference import generate, load_pipeline
from diffengine.models.editors import StableDiffusion
from tests.conftest import NO_VALIDATION, REPO, UNET_TARGETS, tiny_pipeline

DEMO = os.path.join(REPO, "configs", "stable_diffusion_lora",
                    "tiny_sd_lora_demo.py")
TRAIN = os.path.join(REPO, "tools", "train.py")
# Three prompts at 999 denoising steps (PNDM's most on SD's 1000 timesteps):
# minutes of sampling on a busy CPU, as SDXL at 1024 px on a GPU.
SLOW_SAMPLES = [
    "custom_hooks.0.prompt=[a red zorb,a blue zorb,a green zorb]",
    "custom_hooks.0.seed=[0,1]",
    "custom_hooks.0.num_inference_steps=999",
    "custom_hooks.0.scorer=None",
]
# The same, but only after iterations, not at step 0.
SLOW_LATER_SAMPLES = [*SLOW_SAMPLES, "custom_hooks.0.at_start=False"]
# What a stop must take at most: a denoising step, a save and the exit.
WITHIN_SECONDS = 15


def train_command(tiny_sd, data, work_dir, *extra):
    return [sys.executable, TRAIN, DEMO, "--cfg-options",
            f"model.model={tiny_sd}",
            f"train_dataloader.dataset.dataset={data}",
            f"work_dir={work_dir}", "default_hooks.checkpoint.interval=100",
            *NO_VALIDATION, *extra]


def signal_when(command, marker, signals=(signal.SIGTERM,)):
    """Run ``command``, send ``signals`` once a log line holds ``marker``.

    Returns:
        tuple: The exit status, the log, and the seconds from the first
        signal to the exit.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    # A run that never logs the marker must not sample for an hour.
    watchdog = threading.Timer(600, process.kill)
    watchdog.start()
    log, sent = "", None
    for line in process.stdout:
        log += line
        if sent is None and marker in line:
            # the work has begun: let it run a moment, then stop it
            time.sleep(0.5)
            sent = time.perf_counter()
            for signum in signals:
                process.send_signal(signum)
    status = process.wait(timeout=120)
    watchdog.cancel()
    assert sent is not None, log[-3000:]
    seconds = time.perf_counter() - sent
    print(f"\nsignal to exit: {seconds:.2f} s")
    return status, log, seconds


def test_sigterm_while_sampling_saves_the_last_iteration_and_resumes(
        tmp_path, tiny_sd, shapes_data):
    # Samples at iteration 4 (by iterations), in after_train_iter.
    samples = [*SLOW_LATER_SAMPLES, "custom_hooks.0.by_epoch=False",
               "custom_hooks.0.interval=4"]
    status, log, seconds = signal_when(
        train_command(tiny_sd, shapes_data, tmp_path, *samples),
        "at step 4, 999 denoising steps")
    assert status == 128 + signal.SIGTERM, log[-3000:]
    assert seconds < WITHIN_SECONDS, log[-3000:]
    assert "sampling at step 4 stopped by SIGTERM" in log
    saved = str(tmp_path / "iter_4.pth")
    assert f"diffengine: stopped by SIGTERM after saving {saved}; continue " \
        "with --resume" in log
    assert (tmp_path / "last_checkpoint").read_text().strip() == saved
    assert (tmp_path / "step4" / "pytorch_lora_weights.safetensors").is_file()
    assert not glob.glob(str(tmp_path / ".*tmp*"))
    result = subprocess.run(
        train_command(tiny_sd, shapes_data, tmp_path, "custom_hooks=[]",
                      "train_cfg.max_epochs=1", "--resume"),
        capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"resumed from {saved}: epoch 0, iteration 4" in result.stdout
    assert (tmp_path / "step6").is_dir()


def test_sigterm_during_the_last_samples_saves_and_resumes_to_the_end(
        tmp_path, tiny_sd, shapes_data):
    # One epoch of 6 iterations; the samples after it end the run.
    schedule = ["train_cfg.max_epochs=1", "custom_hooks.0.interval=1"]
    status, log, seconds = signal_when(
        train_command(tiny_sd, shapes_data, tmp_path, *SLOW_LATER_SAMPLES,
                      *schedule),
        "at step 6, 999 denoising steps")
    assert status == 128 + signal.SIGTERM, log[-3000:]
    assert seconds < WITHIN_SECONDS
    assert "stopped by SIGTERM after saving" in log
    assert (tmp_path / "step6").is_dir() and (tmp_path / "iter_6.pth").is_file()
    assert not (tmp_path / "epoch_1.pth").exists()
    # The resume finishes what the signal cut: the samples, the last save.
    result = subprocess.run(
        train_command(tiny_sd, shapes_data, tmp_path, *schedule,
                      "custom_hooks.0.num_inference_steps=2", "--resume"),
        capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "samples of step 6 in" in result.stdout
    assert (tmp_path / "epoch_1.pth").is_file()


def test_sigint_during_step_0_samples_exits_with_nothing_to_save(
        tmp_path, tiny_sd, shapes_data):
    status, log, seconds = signal_when(
        train_command(tiny_sd, shapes_data, tmp_path, *SLOW_SAMPLES),
        "at step 0, 999 denoising steps", signals=(signal.SIGINT,))
    assert status == 128 + signal.SIGINT, log[-3000:]
    assert seconds < WITHIN_SECONDS
    assert ("diffengine: stopped by SIGINT before an iteration of this run "
            "finished: nothing new to save") in log
    assert not glob.glob(str(tmp_path / "*.pth"))
    assert not glob.glob(str(tmp_path / "step*"))


def test_two_processes_stop_together_while_the_main_one_samples(
        tmp_path, tiny_sd, shapes_data):
    # torchrun and both workers in a session of their own, signalled all at
    # once as a scheduler or a terminal does (torchrun passes it on again)
    command = [sys.executable, "-m", "torch.distributed.run",
               "--nproc_per_node", "2", TRAIN, DEMO, "--launcher", "pytorch",
               *train_command(tiny_sd, shapes_data, tmp_path,
                              *SLOW_LATER_SAMPLES,
                              "custom_hooks.0.by_epoch=False",
                              "custom_hooks.0.interval=2")[3:]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    watchdog = threading.Timer(600, process.kill)
    watchdog.start()
    log, sent = "", None
    for line in process.stdout:
        log += line
        if sent is None and "at step 2, 999 denoising steps" in line:
            time.sleep(0.5)
            sent = time.perf_counter()
            os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=120)
    watchdog.cancel()
    assert sent is not None, log[-3000:]
    seconds = time.perf_counter() - sent
    print(f"\nsignal to exit, 2 processes: {seconds:.2f} s")
    assert seconds < WITHIN_SECONDS, log[-3000:]
    saved = str(tmp_path / "iter_2.pth")
    # both processes stopped after saving the same iteration, neither at once
    assert log.count(f"diffengine: stopped by SIGTERM after saving {saved}"
                     ) == 2, log[-3000:]
    assert "while stopping" not in log
    assert (tmp_path / "step2").is_dir()
    assert (tmp_path / "last_checkpoint").read_text().strip() == saved


def test_sigterm_during_validation_saves_the_iteration_before_it(tmp_path):
    # the demo's data and base, with its held-out quarter for validation
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_demo.py")],
                   cwd=tmp_path, check=True, capture_output=True)
    # 8 batches of a sample at 100 timesteps: a minute of validation on a
    # busy CPU; validation stops at the next batch
    timesteps = ",".join(map(str, range(0, 1000, 10)))
    command = [sys.executable, TRAIN, DEMO, "--cfg-options", "work_dir=work",
               "custom_hooks=[]", "train_cfg.val_interval=3",
               "val_dataloader.batch_size=1",
               f"val_cfg.timesteps=[{timesteps}]"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log, sent = "", None
    for line in process.stdout:
        log += line
        if sent is None and "validation at step 3" in line:
            time.sleep(0.5)
            sent = time.perf_counter()
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, log[-3000:]
    seconds = time.perf_counter() - sent
    print(f"\nsignal to exit: {seconds:.2f} s")
    assert seconds < WITHIN_SECONDS
    assert "validation stopped by SIGTERM" in log
    saved = tmp_path / "work" / "iter_3.pth"
    assert f"stopped by SIGTERM after saving {saved.relative_to(tmp_path)}" \
        in log or f"stopped by SIGTERM after saving {saved}" in log
    assert saved.is_file() and (tmp_path / "work" / "step3").is_dir()


def test_a_second_signal_exits_at_once_without_writing(
        tmp_path, tiny_sd, shapes_data):
    samples = [*SLOW_LATER_SAMPLES, "custom_hooks.0.by_epoch=False",
               "custom_hooks.0.interval=4"]
    # Two different signals, as a same one sent twice before the process
    # takes it counts once; SIGINT is handled first.
    status, log, seconds = signal_when(
        train_command(tiny_sd, shapes_data, tmp_path, *samples),
        "at step 4, 999 denoising steps",
        signals=(signal.SIGINT, signal.SIGTERM))
    assert status == 128 + signal.SIGTERM, log[-3000:]
    assert seconds < WITHIN_SECONDS
    assert ("diffengine: SIGTERM while stopping: exiting at once, without "
            "saving") in log
    assert "stopped by" not in log
    assert not glob.glob(str(tmp_path / "*.pth"))
    assert not (tmp_path / "last_checkpoint").exists()


def test_a_second_signal_leaves_finally_blocks_and_writes_unrun(tmp_path):
    out = tmp_path / "written"
    script = (
        "import os, signal, time\n"
        "from diffengine import stop\n"
        "with stop.catch_stop_signals():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(30)\n"
        f"    finally:\n        open({str(out)!r}, 'w').close()\n")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    assert time.perf_counter() - start < WITHIN_SECONDS
    assert "SIGINT while stopping: exiting at once" in result.stderr
    assert not out.exists()


def test_the_same_signal_within_a_second_counts_once(tmp_path):
    # as a torchrun worker gets a terminal's SIGINT, then torchrun's copy
    script = (
        "import os, signal, time\n"
        "from diffengine import stop\n"
        "with stop.catch_stop_signals():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.1)\n"
        "    print(stop.stop_requested())\n"
        "    time.sleep(stop.SAME_SIGNAL_SECONDS)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n")
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == [str(int(signal.SIGINT))]
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    assert "SIGINT while stopping: exiting at once" in result.stderr


def test_a_signal_ends_generation_at_the_next_denoising_step(tiny_sd):
    pipe = load_pipeline(tiny_sd)
    calls = []

    def signal_during_the_third_step(module, args, output):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    pipe.unet.register_forward_hook(signal_during_the_third_step)
    requests = []
    with stop.catch_stop_signals(requests.append), pytest.raises(
            stop.StopRequested) as raised:
        generate(pipe, "a red circle", [0], num_inference_steps=20)
    assert raised.value.signum == signal.SIGTERM and requests == [
        signal.SIGTERM]
    assert len(calls) == 3  # not one denoising step more
    # outside the block, the request is gone and the handlers are restored
    assert stop.stop_requested() == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    generate(pipe, "a red circle", [0], num_inference_steps=2)


def test_a_signal_ends_latent_caching_after_the_batch_at_hand(
        tmp_path, tiny_sd, shapes_data):
    encoder = StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS))
    batches = []

    def encode(images):
        batches.append(len(images))
        if len(batches) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return encoder.encode_images(images)

    dataset = HFDataset(shapes_data, pipeline=tiny_pipeline(),
                        cache_latents=True)
    with stop.catch_stop_signals(), pytest.raises(stop.StopRequested):
        dataset.build_latent_cache(encode, encoder.latent_encoder_id(),
                                   str(tmp_path), batch_size=2)
    # 24 images in batches of 2: the first is encoded and kept, no other
    assert batches == [2]
    assert len(glob.glob(str(tmp_path / "*" / "*.safetensors"))) == 2
    assert dataset.latent_cache is None


def test_a_signal_ends_class_images_after_the_batch_at_hand(tmp_path):
    drawn = []

    def generate(seeds):
        drawn.extend(seeds)
        os.kill(os.getpid(), signal.SIGTERM)
        return [np.zeros((8, 8, 3), np.uint8) for _ in seeds]

    folder = str(tmp_path / "dogs")
    with stop.catch_stop_signals(), pytest.raises(stop.StopRequested):
        generate_class_images(folder, 8, generate, batch_size=2)
    assert drawn == [0, 1]
    assert [os.path.basename(p) for p in list_images(folder)] == [
        "class_00000.jpg", "class_00001.jpg"]
