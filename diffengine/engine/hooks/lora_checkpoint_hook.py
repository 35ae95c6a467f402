"""Checkpoint rotation that never leaves the run without a usable one."""
from __future__ import annotations

import os
import os.path as osp
import shutil
from collections import deque

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from diffengine.engine.checkpoint import step_dir_of, write_last_checkpoint
from diffengine.registry import HOOKS


@HOOKS.register_module()
class LoRACheckpointHook(CheckpointHook):
    """``CheckpointHook`` for ``DiffEngineRunner`` checkpoints.

    Each save (``epoch_N.pth`` / ``iter_N.pth`` plus the runner's
    ``step{iteration}/`` folder in diffusers' format) is complete before
    ``last_checkpoint`` points at it and before ``max_keep_ckpts`` removes
    the oldest ``.pth`` together with its step folder; mmengine's hook
    deletes first and writes ``last_checkpoint`` in place. It lives in
    ``default_hooks`` so that ``custom_hooks=[]`` keeps it.

    It also notes the size of the images trained on (``train_resolution``
    in the message hub), which step files record when the dataset's
    pipeline sets no size (no crop, no buckets).
    """

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        img = (data_batch or {}).get("inputs", {}).get("img")
        if img is not None and len(img):
            height, width = img[0].shape[-2:]
            runner.message_hub.update_info("train_resolution",
                                           f"{width}x{height}")
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # mmengine bounds the deque, which would drop ids without deleting
        # their files; rotation below removes them explicitly.
        if self.max_keep_ckpts > 0:
            self.keep_ckpt_ids = deque(self.keep_ckpt_ids)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        filename = self.filename_tmpl.format(step)
        path = osp.join(self.out_dir, filename)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        self.last_ckpt = path
        runner.message_hub.update_info("last_ckpt", path)
        step_dirs = dict(runner.message_hub.get_info("lora_step_dirs", {}))
        step_dirs[path] = step_dir_of(path, meta["iter"])
        if is_main_process():
            write_last_checkpoint(runner.work_dir, path)
        if self.max_keep_ckpts > 0:
            if not self.keep_ckpt_ids or self.keep_ckpt_ids[-1] != step:
                self.keep_ckpt_ids.append(step)
            while len(self.keep_ckpt_ids) > self.max_keep_ckpts:
                old = osp.join(self.out_dir,
                               self.filename_tmpl.format(
                                   self.keep_ckpt_ids.popleft()))
                old_step_dir = step_dirs.pop(old, None)
                if is_main_process():
                    if osp.isfile(old):
                        os.remove(old)
                    if old_step_dir:
                        shutil.rmtree(old_step_dir, ignore_errors=True)
            runner.message_hub.update_info("keep_ckpt_ids",
                                           list(self.keep_ckpt_ids))
        runner.message_hub.update_info("lora_step_dirs", step_dirs)
