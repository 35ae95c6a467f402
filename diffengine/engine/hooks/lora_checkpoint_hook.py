"""mmengine checkpoints that also write a diffusers LoRA step folder."""
from __future__ import annotations

import os.path as osp
import shutil

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper

from diffengine.registry import HOOKS


@HOOKS.register_module()
class LoRACheckpointHook(CheckpointHook):
    """``CheckpointHook`` that writes ``step{N}/`` beside each checkpoint.

    ``N`` is the global iteration. The folder holds
    ``pytorch_lora_weights.safetensors`` for diffusers' ``load_lora_weights``
    and follows ``max_keep_ckpts`` like the ``.pth`` files. It lives in
    ``default_hooks`` so that dropping ``custom_hooks`` keeps it.

    Args:
        step_dir_tmpl (str): Folder name of a step. Defaults to "step{}".
        **kwargs: Arguments of mmengine's ``CheckpointHook``.
    """

    def __init__(self, step_dir_tmpl: str = "step{}", **kwargs) -> None:
        super().__init__(**kwargs)
        self.step_dir_tmpl = step_dir_tmpl
        self.step_dirs: list[str] = []

    def _save_checkpoint_with_step(self, runner, step: int,
                                   meta: dict) -> None:
        super()._save_checkpoint_with_step(runner, step, meta)
        if not is_main_process():
            return
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        step_dir = osp.join(self.out_dir,
                            self.step_dir_tmpl.format(meta["iter"]))
        model.save_lora_weights(step_dir)
        runner.logger.info(f"LoRA weights saved to {step_dir}")
        if step_dir not in self.step_dirs:
            self.step_dirs.append(step_dir)
        while 0 < self.max_keep_ckpts < len(self.step_dirs):
            shutil.rmtree(self.step_dirs.pop(0), ignore_errors=True)
