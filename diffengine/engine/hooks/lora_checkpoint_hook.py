"""mmengine checkpoints that also write a diffusers LoRA step folder."""
from __future__ import annotations

import json
import os.path as osp
import shutil

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper

from diffengine.registry import HOOKS
from diffengine.version import __version__


@HOOKS.register_module()
class LoRACheckpointHook(CheckpointHook):
    """``CheckpointHook`` that writes ``step{N}/`` beside each checkpoint.

    ``N`` is the global iteration. The folder holds
    ``pytorch_lora_weights.safetensors`` for diffusers' ``load_lora_weights``
    and follows ``max_keep_ckpts`` like the ``.pth`` files. Its metadata
    records the step, epoch, resolution, dataset, seed and the whole
    training config (``diffengine.*`` keys), which ``export_lora`` turns
    into the keys A1111 and ComfyUI show. It lives in
    ``default_hooks`` so that dropping ``custom_hooks`` keeps it.

    Args:
        step_dir_tmpl (str): Folder name of a step. Defaults to "step{}".
        **kwargs: Arguments of mmengine's ``CheckpointHook``.
    """

    def __init__(self, step_dir_tmpl: str = "step{}", **kwargs) -> None:
        super().__init__(**kwargs)
        self.step_dir_tmpl = step_dir_tmpl
        self.step_dirs: list[str] = []
        self.resolution: str | None = None  # "WxH" of the training images

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        """Note the training resolution, then checkpoint as mmengine does."""
        img = (data_batch or {}).get("inputs", {}).get("img")
        if img is not None and len(img):
            height, width = img[0].shape[-2:]
            self.resolution = f"{width}x{height}"
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def training_metadata(self, runner, meta: dict) -> dict[str, str]:
        """What a LoRA file should tell about its training run.

        Read back by ``export_lora`` into the ``ss_*`` and ``modelspec.*``
        keys that A1111 and ComfyUI show.
        """
        dataset_cfg = runner.cfg.get("train_dataloader", {}).get("dataset", {})
        metadata = {
            "step": meta["iter"],
            "epoch": meta["epoch"],
            "max_steps": runner.max_iters,
            "num_train_images": len(runner.train_dataloader.dataset),
            "seed": runner.seed,
            "version": __version__,
            "training_config": json.dumps(runner.cfg.to_dict(), default=str),
        }
        if isinstance(dataset_cfg.get("dataset"), str):
            metadata["dataset"] = dataset_cfg["dataset"]
        if self.resolution is not None:
            metadata["resolution"] = self.resolution
        return {k: str(v) for k, v in metadata.items()}

    def _save_checkpoint_with_step(self, runner, step: int,
                                   meta: dict) -> None:
        super()._save_checkpoint_with_step(runner, step, meta)
        if not is_main_process():
            return
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        step_dir = osp.join(self.out_dir,
                            self.step_dir_tmpl.format(meta["iter"]))
        model.save_lora_weights(step_dir, self.training_metadata(runner, meta))
        runner.logger.info(f"LoRA weights saved to {step_dir}")
        if step_dir not in self.step_dirs:
            self.step_dirs.append(step_dir)
        while 0 < self.max_keep_ckpts < len(self.step_dirs):
            shutil.rmtree(self.step_dirs.pop(0), ignore_errors=True)
