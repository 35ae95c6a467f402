"""Sample images during training, through mmengine's visualizer."""
from __future__ import annotations

import signal
import time
from collections.abc import Sequence

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from diffengine.engine.checkpoint import exported_state_dict
from diffengine.engine.log_processor import add_time_between_iterations
from diffengine.errors import ConfigError
from diffengine.generation import GenerationOptions
from diffengine.inference import make_grid, prompt_slug, sampling_progress
from diffengine.registry import HOOKS, SCORERS
from diffengine.stop import StopRequested


@HOOKS.register_module()
class VisualizationHook(Hook):
    """Generate a grid of samples every ``interval`` and record it.

    The grid has a row per prompt and a column per seed. It goes to every
    visualizer backend: with the local backend a PNG named after the prompts
    and the step, ``work_dir/<timestamp>/vis_data/vis_image/<prompts>_<step>.png``;
    TensorBoard when ``TensorboardVisBackend`` is configured. Images are made
    as the ``demo`` tool makes them (same scheduler, per-image CPU seeds,
    steps, guidance), so ``demo`` on the step folder reproduces them; the
    grid is labelled with the prompts and seeds. Only the main process
    generates, with a progress bar where stderr is a terminal.

    A stop signal ends sampling at the next denoising step: the run then
    saves the last finished iteration and stops (before the first
    iteration, at step 0, it stops with nothing to save).

    Args:
        prompt (Sequence[str]): Prompts, one row each.
        interval (int): Every ``interval`` epochs (or iterations when
            ``by_epoch`` is False). Defaults to 1.
        by_epoch (bool): Count epochs rather than iterations. Defaults to
            True.
        height (int, optional): Image height. Defaults to the model's.
        width (int, optional): Image width. Defaults to the model's.
        num_inference_steps (int, optional): Denoising steps. Defaults to
            the base's (``sampling_defaults_for`` its denoiser: 50 for SD
            1.x and SDXL, 28 for SD3 and FLUX.1 [dev], 4 for [schnell]).
        guidance_scale (float, optional): Classifier-free guidance.
            Defaults to the base's (7.5 for SD 1.x and SDXL, 7.0 for
            SD3, 3.5 for FLUX.1 [dev], 0.0 for [schnell]).
        seed (int | Sequence[int]): Seeds, one column each, the same at every
            interval. Defaults to 0.
        negative_prompt (str, optional): Defaults to None.
        at_start (bool): Also sample before the first iteration (step 0:
            the base, as the LoRA starts at zero), unless resuming. Defaults
            to False.
        scorer (dict, optional): An image scorer (``SCORERS``, e.g.
            ``dict(type="ShapeScorer")``) called as ``scorer(image,
            prompt)``; each time, the mean over the seeds of each prompt is
            logged as ``score/<prompt>`` (``scalars.json``, TensorBoard) and
            in the log. Defaults to None.
    """

    priority = "NORMAL"

    def __init__(self,
                 prompt: Sequence[str],
                 interval: int = 1,
                 by_epoch: bool = True,
                 height: int | None = None,
                 width: int | None = None,
                 num_inference_steps: int | None = None,
                 guidance_scale: float | None = None,
                 seed: int | Sequence[int] = 0,
                 negative_prompt: str | None = None,
                 at_start: bool = False,
                 scorer: dict | None = None) -> None:
        if isinstance(prompt, str) or not prompt:
            raise ConfigError(
                f"prompt={prompt!r}: give a non-empty list of prompts.")
        if interval < 1:
            raise ConfigError(f"interval={interval} must be >= 1.")
        self.options = GenerationOptions.of(
            seed=seed, height=height, width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        if not self.options.seeds:
            raise ConfigError("seed=[]: give a seed or a list of seeds.")
        self.prompt = list(prompt)
        self.interval = interval
        self.by_epoch = by_epoch
        self.at_start = at_start
        self.scorer = SCORERS.build(scorer) if scorer is not None else None

    def before_run(self, runner) -> None:
        # before the first step, rather than at the first sampling
        if self._model(runner).text_encoders_dropped:
            raise ConfigError(
                "VisualizationHook samples with the text encoders, which "
                "model.drop_text_encoders_after_caching=True freed: drop "
                "the hook from custom_hooks or the option.")

    def before_train(self, runner) -> None:
        if self.at_start and runner.iter == 0:
            self._visualize(runner, 0)
            runner.stop_if_signalled()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        # A signal that cut the samples short is handled by the loop, after
        # the other hooks finished this iteration (scheduler, checkpoint).
        if not self.by_epoch and self.every_n_train_iters(
                runner, self.interval):
            self._visualize(runner, runner.iter + 1)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and self.every_n_epochs(runner, self.interval):
            self._visualize(runner, runner.iter)
            runner.stop_if_signalled()

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds, one column of the grid each."""
        return self.options.seeds

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(
            runner.model) else runner.model

    def _options(self, runner) -> GenerationOptions:
        """The options of the samples: the model's defaults in place of
        those the config leaves out."""
        return self._model(runner).generation_defaults().overridden_by(
            self.options)

    def _visualize(self, runner, step: int) -> None:
        if not is_main_process():
            return
        start = time.perf_counter()
        steps = self._options(runner).num_inference_steps
        runner.logger.info(
            f"sampling {len(self.prompt)} prompt(s) × {len(self.seeds)} "
            f"seed(s) at step {step}, {steps} denoising steps each")
        try:
            images = self._sample(runner, step)
        except StopRequested as request:
            runner.logger.warning(
                f"sampling at step {step} stopped by "
                f"{signal.Signals(request.signum).name}")
            return
        seconds = time.perf_counter() - start
        runner.logger.info(f"samples of step {step} in {seconds:.1f} s")
        if step:  # at_start samples once; it says nothing of what is left
            add_time_between_iterations(runner, seconds)
        grid = make_grid(images, columns=len(self.seeds),
                         row_labels=self.prompt,
                         column_labels=[f"seed {s}" for s in self.seeds])
        runner.visualizer.add_image(prompt_slug(self.prompt), grid, step=step)
        if self.scorer is not None:
            self._log_scores(runner, images, step)

    def _sample(self, runner, step: int) -> list[np.ndarray]:
        model = self._model(runner)
        options = self._options(runner)
        # The weights a step folder of this step holds (the averages, with
        # LoRAEMAHook), so that ``demo`` on it reproduces the samples.
        total = len(self.prompt) * options.num_inference_steps
        with model.trainable_weights(exported_state_dict(runner)), \
                sampling_progress(total,
                                  f"samples of step {step}") as progress:
            return model.infer(self.prompt, options=options,
                               progress=progress)

    def _log_scores(self, runner, images, step: int) -> None:
        columns = len(self.seeds)
        scores = {
            f"score/{prompt_slug([prompt])}": float(np.mean([
                self.scorer(image, prompt)
                for image in images[row * columns:(row + 1) * columns]]))
            for row, prompt in enumerate(self.prompt)
        }
        runner.visualizer.add_scalars(scores, step=step)
        runner.logger.info(f"sample scores at step {step}: " + ", ".join(
            f"{k.removeprefix('score/')} {v:.3f}" for k, v in scores.items()))
