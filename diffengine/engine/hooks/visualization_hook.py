"""Sample images during training, through mmengine's visualizer."""
from __future__ import annotations

from collections.abc import Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from diffengine.registry import HOOKS


@HOOKS.register_module()
class VisualizationHook(Hook):
    """Generate images from ``prompt`` every ``interval`` and record them.

    Images go to every visualizer backend: PNGs under
    ``work_dir/<timestamp>/vis_data/vis_image`` with the local backend,
    TensorBoard when ``TensorboardVisBackend`` is configured. Only the main
    process generates.

    Args:
        prompt (Sequence[str]): Prompts, one image each.
        interval (int): Every ``interval`` epochs (or iterations when
            ``by_epoch`` is False). Defaults to 1.
        by_epoch (bool): Count epochs rather than iterations. Defaults to
            True.
        height (int, optional): Image height. Defaults to the model's.
        width (int, optional): Image width. Defaults to the model's.
        num_inference_steps (int): Denoising steps. Defaults to 50.
        seed (int): Generator seed, the same for every interval. Defaults to
            0.
        negative_prompt (str, optional): Defaults to None.
    """

    priority = "NORMAL"

    def __init__(self,
                 prompt: Sequence[str],
                 interval: int = 1,
                 by_epoch: bool = True,
                 height: int | None = None,
                 width: int | None = None,
                 num_inference_steps: int = 50,
                 seed: int = 0,
                 negative_prompt: str | None = None) -> None:
        if isinstance(prompt, str) or not prompt:
            raise ValueError(
                f"prompt={prompt!r}: give a non-empty list of prompts.")
        if interval < 1:
            raise ValueError(f"interval={interval} must be >= 1.")
        self.prompt = list(prompt)
        self.interval = interval
        self.by_epoch = by_epoch
        self.infer_kwargs = dict(
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            seed=seed,
            negative_prompt=negative_prompt)

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
        images = model.infer(self.prompt, **self.infer_kwargs)
        for i, image in enumerate(images):
            runner.visualizer.add_image(f"image{i}", image, step=step)
