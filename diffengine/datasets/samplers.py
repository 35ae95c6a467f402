"""Samplers whose samples carry their own seed, so runs replay exactly."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from torch.utils.data import DataLoader, Sampler

from diffengine.errors import ConfigError
from diffengine.registry import DATA_SAMPLERS


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(
        2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


@DATA_SAMPLERS.register_module()
class DeterministicSampler(DefaultSampler):
    """``DefaultSampler`` that yields ``(index, seed)`` pairs.

    The seed depends on the sampler's seed, the epoch and the index only, so
    random crops, flips, noise and timesteps are the same whatever the
    number of processes, the batch split, the DataLoader workers, or an
    interruption and resume. Each rank takes every ``world_size``-th index
    of the shuffled order, as ``DefaultSampler`` does.

    ``skip(n)`` drops the first ``n`` samples of this rank in the next
    epoch it yields, which is how a resumed run continues mid-epoch without
    loading the images it has already trained on.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip(self, num_samples: int) -> None:
        """Drop ``num_samples`` of this rank at the start of the next epoch."""
        self._skip = num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        for index in indices[skip:]:
            yield index, sample_seed(self.seed, self.epoch, index)


def seeded_sampler(dataloader: DataLoader) -> Sampler | None:
    """The sampler of ``dataloader`` that holds the run's sampler seed: the
    batch sampler's when it has one (``AspectRatioBatchSampler``), else the
    sampler."""
    inner = getattr(getattr(dataloader, "batch_sampler", None), "sampler",
                    None)
    if hasattr(inner, "seed"):
        return inner
    return getattr(dataloader, "sampler", None)


@DATA_SAMPLERS.register_module()
class AspectRatioBatchSampler(Sampler[list]):
    """Batches of one aspect-ratio bucket each, the same on any process count.

    For a dataset whose pipeline holds ``BucketResizeCrop``. Each epoch the
    rows are shuffled (from the sampler's seed and the epoch, as
    ``DefaultSampler`` shuffles), split by bucket into global batches of
    ``batch_size × world_size`` rows, and the batches are shuffled; each
    process takes its ``batch_size`` slice of every global batch. The
    global batches do not depend on the process count, so 2 processes ×
    batch 4 train what 1 × batch 8 does; each sample's seed is
    ``sample_seed(seed, epoch, index)``, as ``DeterministicSampler`` gives
    it. :meth:`skip` counts in batches, for resuming mid-epoch.

    The last batch of a bucket is usually incomplete. With ``drop_last``
    it is dropped (its rows are not seen that epoch). Otherwise it is kept:
    padded to full size with rows of the same bucket at loss weight 0, its
    real rows weighted ``full size / real rows``, so that the step trains
    the mean loss of its real rows exactly, as a smaller batch would, while
    every process still runs a full batch of one shape (which DDP's
    gradient average needs). Every row is then seen once an epoch.

    Args:
        sampler (DeterministicSampler): Gives the dataset, ``seed``,
            ``shuffle`` and the epoch (``set_epoch``); its own order is not
            used.
        batch_size (int): Samples per batch and process.
        drop_last (bool): Drop each bucket's incomplete last batch instead
            of padding it. Defaults to False.
    """

    def __init__(self, sampler: Sampler, batch_size: int,
                 drop_last: bool = False) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(
                f"batch_size={batch_size!r} must be a positive integer.")
        missing = [a for a in ("dataset", "seed", "shuffle", "epoch")
                   if not hasattr(sampler, a)]
        if missing:
            raise ConfigError(
                f"AspectRatioBatchSampler needs a sampler with {missing}, "
                f"which {type(sampler).__name__} lacks: use "
                "sampler=dict(type='DeterministicSampler').")
        buckets = getattr(sampler.dataset, "row_buckets", lambda: None)()
        if buckets is None:
            raise ConfigError(
                "AspectRatioBatchSampler batches by aspect-ratio bucket, but "
                "the dataset's pipeline has no BucketResizeCrop: add "
                "dict(type='BucketResizeCrop', resolution=...) in place of "
                "the resize and crop.")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank, self.world_size = get_dist_info()
        self.row_buckets = buckets
        self._skip = 0
        if len(self) == 0:
            raise ConfigError(
                f"AspectRatioBatchSampler: no bucket holds "
                f"{self.global_batch_size} images (batch_size × processes), "
                "so drop_last=True leaves no batch; lower batch_size or set "
                "drop_last=False.")
        print_log(self.bucket_table(), logger="current")

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all processes."""
        return self.batch_size * self.world_size

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Rows per bucket (height, width), from the tallest to the widest."""
        counts = Counter(b for b in self.row_buckets if b is not None)
        return dict(sorted(counts.items(),
                           key=lambda kv: (kv[0][1] / kv[0][0], kv[0])))

    def bucket_table(self) -> str:
        """The buckets, their rows and batches an epoch, as a log table."""
        size = self.global_batch_size
        last = "dropped" if self.drop_last else "padding"
        lines = [
            f"aspect-ratio buckets: {len(self.bucket_counts())} buckets, "
            f"{sum(self.bucket_counts().values())} images, batches of "
            f"{size} ({self.batch_size} × {self.world_size} process"
            f"{'es' * (self.world_size > 1)}), {len(self)} an epoch",
            f"{'width':>7} {'height':>7} {'aspect':>7} {'images':>7} "
            f"{'batches':>8} {last:>8}"]
        for (height, width), count in self.bucket_counts().items():
            full, rest = divmod(count, size)
            batches = full + (bool(rest) and not self.drop_last)
            extra = rest if self.drop_last else (size - rest) % size
            lines.append(f"{width:>7} {height:>7} {width / height:>7.2f} "
                         f"{count:>7} {batches:>8} {extra:>8}")
        return "\n".join(lines)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose order the next iteration gives."""
        self.sampler.set_epoch(epoch)

    def skip(self, num_batches: int) -> None:
        """Drop the first ``num_batches`` batches of the next epoch."""
        self._skip = num_batches

    def global_batches(self) -> list[list[tuple[int, float]]]:
        """This epoch's global batches, each ``(row, loss weight)`` pairs."""
        size = self.global_batch_size
        generator = torch.Generator()
        generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        rows = range(len(self.row_buckets))
        if self.sampler.shuffle:
            rows = torch.randperm(len(rows), generator=generator).tolist()
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for row in rows:
            if self.row_buckets[row] is not None:
                by_bucket.setdefault(self.row_buckets[row], []).append(row)
        batches = []
        for bucket in sorted(by_bucket):
            members = by_bucket[bucket]
            for start in range(0, len(members), size):
                real = members[start:start + size]
                if len(real) == size:
                    batches.append([(row, 1.0) for row in real])
                elif not self.drop_last:
                    padding = [members[i % len(members)]
                               for i in range(size - len(real))]
                    batches.append([(row, size / len(real)) for row in real]
                                   + [(row, 0.0) for row in padding])
        if self.sampler.shuffle:
            order = torch.randperm(len(batches), generator=generator)
            batches = [batches[i] for i in order.tolist()]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int, float]]]:
        skip, self._skip = self._skip, 0
        seed, epoch = self.sampler.seed, self.sampler.epoch
        start = self.rank * self.batch_size
        for batch in self.global_batches()[skip:]:
            yield [(row, sample_seed(seed, epoch, row), weight)
                   for row, weight in batch[start:start + self.batch_size]]

    def __len__(self) -> int:
        size = self.global_batch_size
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(count / size)
                   for count in self.bucket_counts().values())
