"""Validation loss at fixed noise and timesteps, comparable across runs."""
from __future__ import annotations

import signal
import time
from collections.abc import Sequence

from mmengine.evaluator import BaseMetric
from mmengine.runner import ValLoop

from diffengine.engine.log_processor import add_time_between_iterations
from diffengine.errors import ConfigError
from diffengine.registry import LOOPS, METRICS
from diffengine.stop import StopRequested

# Every validation sample's noise comes from this sampler seed and its index,
# never from the run's seed, so that runs with other seeds compare.
VALIDATION_SAMPLER = dict(type="DeterministicSampler", shuffle=False, seed=0)


@LOOPS.register_module()
class ValidationLossLoop(ValLoop):
    """mmengine's ``ValLoop`` computing the model's ``validation_loss``.

    Each validation sample is noised at every timestep of ``timesteps``
    with noise from its own seed, so the loss of a checkpoint is the same
    number in every evaluation, with any number of processes, and in runs
    with other seeds (see ``LatentDiffusionModel.validation_loss``). The
    sampler defaults to an unshuffled ``DeterministicSampler`` with seed 0;
    a configured one must be a ``DeterministicSampler`` with a ``seed``.
    The weights evaluated are those a step folder written now would hold
    (the averages, with ``LoRAEMAHook``). ``DenoisingLossMetric`` turns the
    losses into ``val/loss``; ``train_cfg.val_interval`` says how often it
    runs (iterations with ``val_by_epoch=False``).

    During training, a stop signal ends validation at the next batch (all
    processes agree on it there); the run then saves the last finished
    iteration and stops.

    Args:
        runner (Runner): The runner.
        dataloader (DataLoader | dict): The validation data.
        evaluator (Evaluator | dict | list): Its metrics.
        timesteps (Sequence[int]): The denoiser's timesteps of every sample
            (under flow matching, σ = t/T). Defaults to ``(100, 300, 500,
            700, 900)``, spread over SD's 1000.
        fp16 (bool): As mmengine's ``ValLoop``. Defaults to False.
    """

    def __init__(self, runner, dataloader, evaluator,
                 timesteps: Sequence[int] = (100, 300, 500, 700, 900),
                 fp16: bool = False) -> None:
        if isinstance(dataloader, dict):
            dataloader = dict(dataloader)
            sampler = dict(VALIDATION_SAMPLER, **dataloader.get("sampler", {}))
            if sampler["type"] != "DeterministicSampler" or sampler.get(
                    "seed") is None:
                raise ConfigError(
                    f"val_dataloader.sampler={dataloader['sampler']}: the "
                    "validation loss needs a DeterministicSampler with a "
                    "fixed seed, e.g. dict(type='DeterministicSampler', "
                    "shuffle=False, seed=0).")
            dataloader["sampler"] = sampler
        timesteps = [int(t) for t in timesteps]
        if not timesteps:
            raise ConfigError("val_cfg.timesteps is empty: give timesteps.")
        super().__init__(runner, dataloader, evaluator, fp16)
        limit = runner.bare_model.schedule.num_train_timesteps
        bad = [t for t in timesteps if not 0 <= t < limit]
        if bad:
            raise ConfigError(
                f"val_cfg.timesteps={timesteps}: {bad} outside [0, {limit}).")
        self.timesteps = timesteps

    def run(self) -> dict:
        # While training, the weights a step folder would hold; a runner
        # that only validates evaluates the weights it loaded.
        if not self._training:
            return super().run()
        start = time.perf_counter()
        self.runner.logger.info(
            f"validation at step {self.runner.iter}: {len(self.dataloader)} "
            f"batches × {len(self.timesteps)} timesteps")
        try:
            with self.runner.bare_model.trainable_weights(
                    self.runner.exported_state_dict()):
                metrics = super().run()
        except StopRequested as request:
            self.runner.logger.warning(
                "validation stopped by "
                f"{signal.Signals(request.signum).name}")
            # The iteration before it had finished: save it and stop.
            self.runner.stop_if_signalled()
            raise
        add_time_between_iterations(self.runner, time.perf_counter() - start)
        return metrics

    @property
    def _training(self) -> bool:
        return self.runner.built_train_loop is not None

    def run_iter(self, idx: int, data_batch: dict) -> None:
        # Every process checks at the same batch, so that all stop there.
        signum = self._training and self.runner.agreed_stop_signal()
        if signum:
            raise StopRequested(signum)
        self.runner.call_hook("before_val_iter", batch_idx=idx,
                              data_batch=data_batch)
        model = self.runner.bare_model
        inputs = model.data_preprocessor(data_batch, False)["inputs"]
        losses = model.validation_loss(inputs, self.timesteps)
        outputs = [dict(seed=int(seed), loss=float(loss))
                   for seed, loss in zip(inputs["seed"], losses.tolist(),
                                         strict=True)]
        self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook("after_val_iter", batch_idx=idx,
                              data_batch=data_batch, outputs=outputs)


@METRICS.register_module()
class DenoisingLossMetric(BaseMetric):
    """The mean of the samples' validation losses, as ``val/loss``.

    Summed in float64 in the order of the samples' seeds after gathering
    every process's samples, so the mean does not depend on how the
    samples were split. mmengine logs it as ``val/loss`` in
    ``scalars.json`` and to TensorBoard.

    Args:
        collect_device (str): As mmengine's ``BaseMetric``. Defaults to
            "cpu".
        prefix (str, optional): Defaults to "val".
    """

    default_prefix = "val"

    def __init__(self, collect_device: str = "cpu",
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        self.results.extend((s["seed"], s["loss"]) for s in data_samples)

    def compute_metrics(self, results: list) -> dict[str, float]:
        # A padded last batch repeats samples: each seed counts once.
        losses = dict(sorted(results))
        return {"loss": float(sum(losses.values()) / len(losses))}
