"""Run diffusers' own ``train_text_to_image_lora.py`` as a benchmark side.

The script is not part of the diffusers package; the user points at a copy
(``examples/text_to_image/train_text_to_image_lora.py`` of a diffusers
checkout) with ``train_step.py --diffusers-script PATH``. It runs in a fresh
process on the same model folder, image folder, resolution, batch and rank
as the other sides, with the settings ``plain_loop.py`` copies from it
(random crop, random flip, lr 1e-4, no validation).

The script has no timing hook, so steps are read from the outside: it
advances a tqdm bar named "Steps" after each optimizer step, and each
update that reaches stderr marks the end of a step, timed on arrival in
wall-clock seconds and in the child's CPU seconds (``/proc/PID/stat``).
Peak RSS comes from ``wait4``. On CUDA the memory column would be RSS too:
the script reports no GPU memory.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

# tqdm's bar: "Steps:  40%|████      | 2/5 [00:03<00:04, ...]"
PROGRESS = re.compile(r"Steps:.*?\|\s*(\d+)/(\d+)")


def script_command(script: str, model: str, data: str, resolution: int,
                   batch_size: int, rank: int, steps: int, warmup: int,
                   num_workers: int, output_dir: str,
                   mixed_precision: str | None = None,
                   extra_args: Iterable[str] = ()) -> list[str]:
    """The command line that trains ``warmup + steps`` steps."""
    command = [
        sys.executable, script,
        "--pretrained_model_name_or_path", model,
        "--train_data_dir", data,
        "--resolution", str(resolution),
        "--train_batch_size", str(batch_size),
        "--rank", str(rank),
        "--max_train_steps", str(warmup + steps),
        "--learning_rate", "1e-4",
        "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0",
        "--random_flip",
        "--dataloader_num_workers", str(num_workers),
        "--checkpointing_steps", str(10**9),
        "--seed", "0",
        # accelerate keeps the trackers that are installed: none is needed
        "--report_to", "all",
        "--output_dir", output_dir,
    ]
    if mixed_precision:
        command += ["--mixed_precision", mixed_precision]
    return command + list(extra_args)


class ProgressReader:
    """Turns the chunks of a child's stderr into step-end marks.

    Each mark is ``(step, wall seconds, CPU seconds)``; when one update
    covers several steps (tqdm throttles its output), the interval is split
    evenly between them.

    Args:
        cpu_seconds (Callable): The child's CPU seconds so far.
    """

    def __init__(self, cpu_seconds: Callable[[], float]) -> None:
        self.cpu_seconds = cpu_seconds
        self.marks: list[tuple[int, float, float]] = [
            (0, time.perf_counter(), cpu_seconds())]
        self.text = ""
        self._pending = ""

    def feed(self, chunk: str) -> None:
        now, cpu = time.perf_counter(), self.cpu_seconds()
        self.text += chunk
        # tqdm redraws with "\r"; a line ends at either
        parts = re.split(r"[\r\n]", self._pending + chunk)
        self._pending = parts.pop()
        for part in parts:
            match = PROGRESS.search(part)
            if match and int(match[1]) > self.marks[-1][0]:
                self.marks.append((int(match[1]), now, cpu))

    def step_times(self) -> tuple[list[float], list[float]]:
        """Wall and CPU seconds of each step, from step 1 on."""
        walls, cpus = [], []
        for (s0, w0, c0), (s1, w1, c1) in zip(self.marks, self.marks[1:],
                                              strict=False):
            n = s1 - s0
            walls += [(w1 - w0) / n] * n
            cpus += [(c1 - c0) / n] * n
        return walls, cpus


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11], fields[12]: utime, stime (13th and 14th after the name)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_script(script: str) -> None:
    """Raise a clear error when ``script`` is not a file."""
    if not os.path.isfile(script):
        raise FileNotFoundError(
            f"--diffusers-script {script!r} does not exist; point it at "
            "examples/text_to_image/train_text_to_image_lora.py of a "
            "diffusers checkout.")


def run_diffusers_script(script: str, model: str, data: str, resolution: int,
                         batch_size: int, rank: int, steps: int, warmup: int,
                         num_workers: int = 0, device: str = "cpu",
                         mixed_precision: str | None = None,
                         threads: int | None = None,
                         extra_args: Iterable[str] = ()) -> dict:
    """Train with diffusers' script in a child process; the same result
    dict as the other sides (``step_times``, ``cpu_times``, ``median_s``,
    ``samples_per_s``, ``peak_bytes``).

    Raises:
        FileNotFoundError: If ``script`` does not exist.
        RuntimeError: If the script fails or reports fewer steps than it
            was asked for; the message holds the end of its output.
    """
    check_script(script)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix="diffusers-script-") as out:
        command = script_command(script, model, data, resolution, batch_size,
                                 rank, steps, warmup, num_workers, out,
                                 mixed_precision, extra_args)
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=env, cwd=out)
        reader = ProgressReader(lambda: process_cpu_seconds(child.pid))
        while chunk := os.read(child.stderr.fileno(), 65536):
            reader.feed(chunk.decode(errors="replace"))
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    walls, cpus = reader.step_times()
    if child.returncode != 0 or len(walls) < warmup + steps:
        raise RuntimeError(
            f"{script} exited {child.returncode} after {len(walls)} of "
            f"{warmup + steps} steps:\n{reader.text[-3000:]}")
    walls, cpus = walls[warmup:warmup + steps], cpus[warmup:warmup + steps]
    median = statistics.median(walls)
    return {
        "step_times": walls,
        "cpu_times": cpus,
        "median_s": median,
        "samples_per_s": batch_size / median,
        # Linux reports ru_maxrss in KiB
        "peak_bytes": usage.ru_maxrss * 1024,
    }
