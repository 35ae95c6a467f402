"""Training loops that resume mid-epoch without re-reading seen images."""
from __future__ import annotations

import torch
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import DataLoader

from diffengine.errors import ConfigError, NonFiniteLossError
from diffengine.registry import LOOPS


def fresh_iterator(dataloader: DataLoader):
    """``iter(dataloader)`` without drawing from the global torch RNG.

    A DataLoader draws its workers' base seed from the global generator each
    time an iterator is made; an interrupted and resumed run makes one at a
    different point, which would shift every later random number.
    """
    state = torch.get_rng_state()
    iterator = iter(dataloader)
    torch.set_rng_state(state)
    return iterator


def position(dataloader: DataLoader, epoch: int, batches: int) -> None:
    """Make the next epoch of ``dataloader`` epoch ``epoch`` from batch
    ``batches`` on.

    A batch sampler with ``skip`` (``AspectRatioBatchSampler``) skips whole
    batches; otherwise the sampler skips ``batches × batch_size`` samples.
    """
    sampler, batch_sampler = dataloader.sampler, dataloader.batch_sampler
    for part in (sampler, batch_sampler):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
    if not batches:
        return
    if hasattr(batch_sampler, "skip"):
        batch_sampler.skip(batches)
    elif hasattr(sampler, "skip"):
        sampler.skip(batches * dataloader.batch_size)
    else:
        raise ConfigError(
            f"resuming mid-epoch needs a sampler with skip() "
            f"(DeterministicSampler); {type(sampler).__name__} has none: set "
            "train_dataloader.sampler=dict(type='DeterministicSampler'), or "
            "resume from a checkpoint at the end of an epoch.")


class _ResumableMixin:
    """What both loops share: the stop checks around each iteration."""

    def run_iter(self, *args) -> None:
        try:
            super().run_iter(*args)
        except NonFiniteLossError as err:
            last = self.runner.message_hub.get_info("last_ckpt")
            raise NonFiniteLossError(
                f"{err} at iteration {self._iter + 1}; no weights were "
                "updated with it. The last good checkpoint is "
                f"{last or 'none (no checkpoint saved yet)'}: resume with "
                "--resume after lowering optim_wrapper.optimizer.lr or "
                "checking the data.") from err
        self.runner.stop_if_signalled()

    def validate_if_due(self, count: int, last: int) -> None:
        """Run the validation loop after the ``count``-th epoch or iteration
        (whichever ``val_begin`` and ``val_interval`` count) when it is due:
        every ``val_interval``-th from ``val_begin`` on, and the ``last``."""
        if (self.runner.val_loop is not None and count >= self.val_begin
                and (count % self.val_interval == 0 or count == last)):
            self.runner.val_loop.run()
            self.runner.model.train()


@LOOPS.register_module()
class ResumableEpochTrainLoop(_ResumableMixin, EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes inside an epoch.

    A checkpoint taken after iteration ``i`` of epoch ``e`` resumes at batch
    ``i - e × len(dataloader)`` of that epoch; the sampler skips the samples
    before it without loading them.

    Args:
        val_by_epoch (bool): ``val_begin`` and ``val_interval`` count epochs,
            as in mmengine; False counts iterations, and validation runs
            after every ``val_interval``-th iteration (and the last) instead
            of after epochs. Defaults to True.
        *args, **kwargs: Those of mmengine's ``EpochBasedTrainLoop``.
    """

    def __init__(self, *args, val_by_epoch: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.val_by_epoch = val_by_epoch

    def run(self) -> torch.nn.Module:
        self._resume_batches = self._iter - self._epoch * len(self.dataloader)
        if not 0 <= self._resume_batches <= len(self.dataloader):
            raise ConfigError(
                f"checkpoint at epoch {self._epoch}, iteration {self._iter} "
                f"does not fit {len(self.dataloader)} batches an epoch: the "
                "dataset, batch size or process count changed since; resume "
                "with the settings it was trained with, or start a new "
                "work_dir.")
        self.runner.call_hook("before_train")
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_epoch()
            if not self.val_by_epoch:
                continue
            self._decide_current_val_interval()
            self.validate_if_due(self._epoch, self._max_epochs)
        self.runner.call_hook("after_train")
        return self.runner.model

    def run_iter(self, idx: int, data_batch) -> None:
        super().run_iter(idx, data_batch)
        if not self.val_by_epoch:
            self.validate_if_due(self._iter, self._max_iters)

    def run_epoch(self) -> None:
        self.runner.call_hook("before_train_epoch")
        self.runner.model.train()
        start, self._resume_batches = self._resume_batches, 0
        if start:
            print_log(f"resuming epoch {self._epoch + 1} at batch {start}",
                      logger="current")
        position(self.dataloader, self._epoch, start)
        for idx, data_batch in enumerate(fresh_iterator(self.dataloader),
                                         start=start):
            self.run_iter(idx, data_batch)
        self.runner.call_hook("after_train_epoch")
        self._epoch += 1


@LOOPS.register_module()
class ResumableIterTrainLoop(_ResumableMixin, IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that resumes without replaying the data.

    The data cycles through epochs of the dataloader; iteration ``i``
    resumes at batch ``i mod len`` of epoch ``i // len``.
    """

    def run(self) -> torch.nn.Module:
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        self._data_epoch, start = divmod(self._iter, len(self.dataloader))
        position(self.dataloader, self._data_epoch, start)
        self._iterator = fresh_iterator(self.dataloader)
        # Once, not every iteration as mmengine does: train() walks every
        # module (about 10 ms for SD 1.5, a quarter of a GPU step).
        self.runner.model.train()
        while self._iter < self._max_iters and not self.stop_training:
            self.run_iter(self._next_batch())
            self._decide_current_val_interval()
            self.validate_if_due(self._iter, self._max_iters)
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model

    def _next_batch(self):
        try:
            return next(self._iterator)
        except StopIteration:
            self._data_epoch += 1
            position(self.dataloader, self._data_epoch, 0)
            self._iterator = fresh_iterator(self.dataloader)
            return next(self._iterator)

