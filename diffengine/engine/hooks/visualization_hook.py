"""Sample images during training, through mmengine's visualizer."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from diffengine.errors import ConfigError
from diffengine.inference import make_grid, prompt_slug
from diffengine.registry import HOOKS, SCORERS


@HOOKS.register_module()
class VisualizationHook(Hook):
    """Generate a grid of samples every ``interval`` and record it.

    The grid has a row per prompt and a column per seed. It goes to every
    visualizer backend: with the local backend a PNG named after the prompts
    and the step, ``work_dir/<timestamp>/vis_data/vis_image/<prompts>_<step>.png``;
    TensorBoard when ``TensorboardVisBackend`` is configured. Images are made
    as the ``demo`` tool makes them (same scheduler, per-image CPU seeds,
    steps, guidance), so ``demo`` on the step folder reproduces them. Only
    the main process generates.

    Args:
        prompt (Sequence[str]): Prompts, one row each.
        interval (int): Every ``interval`` epochs (or iterations when
            ``by_epoch`` is False). Defaults to 1.
        by_epoch (bool): Count epochs rather than iterations. Defaults to
            True.
        height (int, optional): Image height. Defaults to the model's.
        width (int, optional): Image width. Defaults to the model's.
        num_inference_steps (int): Denoising steps. Defaults to 50.
        guidance_scale (float): Classifier-free guidance. Defaults to 7.5.
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
                 num_inference_steps: int = 50,
                 guidance_scale: float = 7.5,
                 seed: int | Sequence[int] = 0,
                 negative_prompt: str | None = None,
                 at_start: bool = False,
                 scorer: dict | None = None) -> None:
        if isinstance(prompt, str) or not prompt:
            raise ConfigError(
                f"prompt={prompt!r}: give a non-empty list of prompts.")
        if interval < 1:
            raise ConfigError(f"interval={interval} must be >= 1.")
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if not seeds:
            raise ConfigError("seed=[]: give a seed or a list of seeds.")
        self.prompt = list(prompt)
        self.seeds = seeds
        self.interval = interval
        self.by_epoch = by_epoch
        self.at_start = at_start
        self.scorer = SCORERS.build(scorer) if scorer is not None else None
        self.infer_kwargs = dict(
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt)

    def before_train(self, runner) -> None:
        if self.at_start and runner.iter == 0:
            self._visualize(runner, 0)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not self.by_epoch and self.every_n_train_iters(
                runner, self.interval):
            self._visualize(runner, runner.iter + 1)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and self.every_n_epochs(runner, self.interval):
            self._visualize(runner, runner.iter)

    def _visualize(self, runner, step: int) -> None:
        if not is_main_process():
            return
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        # The weights a step folder of this step holds (the averages, with
        # LoRAEMAHook), so that ``demo`` on it reproduces the samples.
        exported = getattr(runner, "exported_state_dict", None)
        with (model.trainable_weights(exported()) if exported
              else contextlib.nullcontext()):
            images = model.infer(self.prompt, seed=self.seeds,
                                 **self.infer_kwargs)
        grid = make_grid(images, columns=len(self.seeds))
        runner.visualizer.add_image(prompt_slug(self.prompt), grid, step=step)
        if self.scorer is not None:
            self._log_scores(runner, images, step)

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
