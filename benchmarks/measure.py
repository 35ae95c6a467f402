"""What both sides of the benchmark measure, the same way."""
from __future__ import annotations

import resource
import statistics
import time
from itertools import pairwise

import torch


class StepClock:
    """Marks the end of each training step; a step is the time between two
    marks, so it includes loading its batch and every per-step hook.

    Besides wall-clock time it records the process's CPU time, which other
    processes on a shared machine disturb far less (with DataLoader workers
    it misses their share).

    Args:
        device (torch.device): CUDA steps are synchronised before each mark,
            so that a mark is taken when the GPU work is done.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks = [(time.perf_counter(), time.process_time())]

    def mark(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((time.perf_counter(), time.process_time()))

    def step_times(self) -> list[float]:
        """Wall-clock seconds of each step."""
        return [b[0] - a[0] for a, b in pairwise(self.marks)]

    def cpu_times(self) -> list[float]:
        """CPU seconds of each step (all threads of this process)."""
        return [b[1] - a[1] for a, b in pairwise(self.marks)]


def peak_memory(device: torch.device) -> int:
    """Peak bytes: allocated on the GPU with CUDA, resident (RSS) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def summary(clock: StepClock, warmup: int, batch_size: int,
            device: torch.device) -> dict:
    """Median seconds per step after ``warmup`` steps, samples/s, peak
    memory; the JSON a worker prints."""
    times = clock.step_times()[warmup:]
    median = statistics.median(times)
    return {
        "step_times": times,
        "cpu_times": clock.cpu_times()[warmup:],
        "median_s": median,
        "samples_per_s": batch_size / median,
        "peak_bytes": peak_memory(device),
    }
