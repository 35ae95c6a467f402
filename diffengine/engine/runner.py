"""mmengine's Runner with what LoRA training on any machine needs."""
from __future__ import annotations

import datetime
import glob
import os
import os.path as osp
import signal

import mmengine
import torch
import torch.distributed as dist
from mmengine.dist import is_distributed, is_main_process
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.runner import BaseLoop, Runner
from torch.nn.parallel import DistributedDataParallel

from diffengine import stop
from diffengine.datasets.preparation import PrepareContext
from diffengine.datasets.samplers import seeded_sampler
from diffengine.engine.checkpoint import (
    STEP_DIR,
    CheckpointLoadError,
    build_checkpoint,
    checkpoint_meta,
    exported_state_dict,
    load_checkpoint_file,
    remove_stale_temporaries,
    restore_rng_state,
    step_dir_of,
    to_cpu,
    training_metadata,
    write_checkpoint,
    write_last_checkpoint,
)
from diffengine.engine.config_check import check_config
from diffengine.engine.sharding import (
    WRAPPER,
    FullyShardWrapper,
    full_tensors,
    shard_optimizer_state,
    shard_state_dict,
)
from diffengine.errors import ConfigError, DiffEngineError
from diffengine.registry import DATASETS, MODEL_WRAPPERS, RUNNERS

# step_dir_of, to_cpu and the other checkpoint helpers live in
# diffengine.engine.checkpoint; they stay importable from here.
__all__ = [
    "STEP_DIR",
    "DiffEngineRunner",
    "TrainingInterruptedError",
    "check_work_dir",
    "init_process_group",
    "remove_stale_temporaries",
    "step_dir_of",
    "to_cpu",
    "write_last_checkpoint",
]


class TrainingInterruptedError(DiffEngineError):
    """SIGINT or SIGTERM stopped training, after a resumable checkpoint
    when an iteration of the run had finished.

    Args:
        signum (int): The signal.
        checkpoint (str, optional): The checkpoint saved; None when the stop
            came before the first iteration (step-0 samples, latent cache,
            class images), with nothing to save.
    """

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after saving {checkpoint}; continue with "
            "--resume" if checkpoint else
            f"stopped by {name} before an iteration of this run finished: "
            "nothing new to save")
        self.signum = signum
        self.checkpoint = checkpoint
        self.status = 128 + signum  # as a shell reports a signal

    def line(self) -> str:
        return f"diffengine: {self}"


def check_work_dir(work_dir: str) -> None:
    """Fail before training when ``work_dir`` cannot be written."""
    try:
        os.makedirs(work_dir, exist_ok=True)
        probe = osp.join(work_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise ConfigError(
            f"work_dir={work_dir!r} cannot be written ({err.strerror}); "
            "pass --work-dir with a writable folder.") from err


def init_process_group(dist_cfg: dict) -> None:
    """torch.distributed for ``--launcher pytorch``, on CUDA or CPUs.

    mmengine's version calls ``torch.cuda.set_device`` unconditionally and
    defaults to NCCL; here the backend is NCCL with CUDA and gloo without,
    unless ``dist_cfg`` names one.
    """
    backend = dist_cfg.pop("backend", None) or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if isinstance(dist_cfg.get("timeout"), (int, float)):
        dist_cfg["timeout"] = datetime.timedelta(seconds=dist_cfg["timeout"])
    dist.init_process_group(backend=backend, **dist_cfg)


@RUNNERS.register_module()
class DiffEngineRunner(Runner):
    """mmengine ``Runner`` for LoRA training, on CUDA or on CPUs.

    What it changes, and why:

    - Distributed setup picks NCCL on CUDA and gloo on CPUs (unless
      ``env_cfg.dist_cfg.backend`` says otherwise), and calls
      ``torch.cuda.set_device`` only when there is CUDA; DDP gets device ids
      only on CUDA and leaves the frozen base out, so only LoRA gradients
      are synchronised. ``model_wrapper_cfg=dict(type="FullyShardWrapper")``
      shards the denoiser across the processes instead (FSDP2, see
      :mod:`diffengine.engine.sharding`); checkpoints still hold whole
      tensors, gathered by every process and written by the first.
    - Loops without ``type`` are the resumable ones, which continue inside
      an epoch without re-reading seen images.
    - Checkpoints are plain data written atomically (see
      :mod:`diffengine.engine.checkpoint`), hold only the trainable weights,
      the optimizer and scheduler states, the RNG states and the sampler
      seed, and each comes with ``step{iteration}/`` holding the LoRA in
      diffusers' format.
    - Resume loads with ``weights_only=True``, restores the RNG states last
      (after any reseeding), and falls back to an older checkpoint with a
      warning when the newest cannot be read.
    - SIGINT and SIGTERM finish the current iteration, save a resumable
      checkpoint and stop; sampling, validation, latent caching and class
      images stop at their next denoising step or batch (see
      :mod:`diffengine.stop`). A second signal exits at once.
    - The training dataset prepares itself (class images, pre-flight scan,
      text-embedding and latent caches) before its data loader is built
      (see :meth:`prepare_dataset`).
    - The optimizer holds the trainable parameters only, fused on CUDA
      (``LoRAOptimWrapperConstructor``); DataLoaders default to persistent
      workers and, with CUDA, pinned memory.
    """

    def __init__(self, *args, **kwargs) -> None:
        # before super() builds the model: a typo fails in a second
        check_config(kwargs)
        if kwargs.get("work_dir") is not None:
            check_work_dir(kwargs["work_dir"])
        # mmengine's default names NCCL; without one the device decides.
        if kwargs.get("env_cfg") is None:
            kwargs["env_cfg"] = dict(dist_cfg=dict())
        super().__init__(*args, **kwargs)

    # ---- distributed -------------------------------------------------
    def setup_env(self, env_cfg: dict) -> None:
        if (self.distributed and self.launcher == "pytorch"
                and not is_distributed()):
            init_process_group(dict(env_cfg.get("dist_cfg", {})))
        # slurm and mpi go through mmengine's own init, unchanged.
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        sharded = (model_wrapper_cfg or {}).get("type") == WRAPPER
        if self.distributed and sharded:
            # mmengine's wrap_model looks the type up in mmengine's registry,
            # which does not hold diffengine's wrappers
            return MODEL_WRAPPERS.build(model_wrapper_cfg, default_args=dict(
                module=model.to(mmengine.device.get_device())))
        if not self.distributed or model_wrapper_cfg is not None:
            return super().wrap_model(model_wrapper_cfg, model)
        model = model.to(mmengine.device.get_device())
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in model.named_buffers()]
        # Every rank loads the same frozen base; DDP need neither broadcast
        # it at start nor watch it for gradients.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, frozen)
        device_ids = ([int(os.environ["LOCAL_RANK"])]
                      if torch.cuda.is_available() else None)
        return MMDistributedDataParallel(
            module=model,
            device_ids=device_ids,
            broadcast_buffers=False,
            find_unused_parameters=self.cfg.get("find_unused_parameters",
                                                False))

    def _init_model_weights(self) -> None:
        if isinstance(self.model, FullyShardWrapper):
            # mmengine would broadcast each process's shard as if whole; the
            # wrapper made the adapters the same everywhere before sharding.
            self.bare_model.init_weights()
            return
        super()._init_model_weights()

    @property
    def resuming(self) -> bool:
        """Whether the run continues a checkpoint (``resume=True``), as
        opposed to starting from one (``load_from``) or from scratch."""
        return bool(self._resume)

    @property
    def built_train_loop(self) -> BaseLoop | None:
        """The train loop once built, None before (the public
        ``train_loop`` builds it from its config when read)."""
        loop = self._train_loop
        return loop if isinstance(loop, BaseLoop) else None

    @property
    def bare_model(self) -> torch.nn.Module:
        """The model without its DDP wrapper, if it has one."""
        return self.model.module if is_model_wrapper(self.model) else self.model

    def build_train_loop(self, loop):
        if not isinstance(loop, dict):
            return super().build_train_loop(loop)
        if "type" not in loop:
            loop = dict(loop)
            by_epoch = loop.pop("by_epoch")
            loop["type"] = ("ResumableEpochTrainLoop"
                            if by_epoch else "ResumableIterTrainLoop")
        prepared = self.prepare_dataset()
        loop = super().build_train_loop(loop)
        dataset = loop.dataloader.dataset
        if not prepared and hasattr(dataset, "prepare"):
            # a data loader given built: its dataset prepares now
            dataset.prepare(self._prepare_context(
                loop.dataloader.batch_size
                or loop.dataloader.batch_sampler.batch_size))
        return loop

    def build_optim_wrapper(self, optim_wrapper):
        if (isinstance(optim_wrapper, dict) and "optimizer" in optim_wrapper
                and "constructor" not in optim_wrapper):
            optim_wrapper = dict(optim_wrapper,
                                 constructor="LoRAOptimWrapperConstructor")
        return super().build_optim_wrapper(optim_wrapper)

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
        """mmengine's, with defaults that fit the machine.

        Workers persist across epochs (instead of forking anew and copying
        the dataset each epoch), and batches are pinned when they go to a
        GPU, so that the copy overlaps compute. A config that sets either
        keeps its value.
        """
        if isinstance(dataloader, dict):
            dataloader = dict(dataloader)
            dataloader.setdefault("persistent_workers",
                                  dataloader.get("num_workers", 0) > 0)
            dataloader.setdefault("pin_memory", torch.cuda.is_available())
        return Runner.build_dataloader(dataloader, seed, diff_rank_seed)

    def prepare_dataset(self) -> bool:
        """Let the training dataset prepare itself, before its data loader.

        A dataset with a ``prepare`` method (class images, the pre-flight
        scan, the text-embedding and latent caches: see
        :class:`~diffengine.datasets.preparation.PrepareContext`) is built
        here from its config and prepared, so that the sampler sees its rows
        as they will be trained on; the loader is then built around it.

        Returns:
            bool: Whether the dataset was reached before its loader: False
            when the data loader is given built, or its config holds no
            dataset.
        """
        loader = self._train_dataloader
        dataset = loader.get("dataset") if isinstance(loader, dict) else None
        if dataset is None:
            return False
        if isinstance(dataset, dict):
            kind = dataset.get("type")
            dataset_class = kind if isinstance(kind, type) else DATASETS.get(
                str(kind))
            if not hasattr(dataset_class, "prepare"):
                return True
            dataset = DATASETS.build(dataset)
            # as mmengine's build_dataloader does with a config
            if hasattr(dataset, "full_init"):
                dataset.full_init()
        if hasattr(dataset, "prepare"):
            dataset.prepare(self._prepare_context(loader["batch_size"]))
        self._train_dataloader = dict(loader, dataset=dataset)
        return True

    def _prepare_context(self, batch_size: int) -> PrepareContext:
        return PrepareContext(model=self.bare_model, work_dir=self.work_dir,
                              batch_size=batch_size, logger=self.logger)

    # ---- signals -----------------------------------------------------
    def train(self) -> torch.nn.Module:
        with stop.catch_stop_signals(self._log_stop_request):
            try:
                return super().train()
            except stop.StopRequested as request:
                # Raised before the first iteration (latent cache, class
                # images, step-0 samples): no weights to save yet.
                raise TrainingInterruptedError(request.signum, None) from None

    def _log_stop_request(self, signum: int) -> None:
        self.logger.warning(
            f"{signal.Signals(signum).name}: stopping within seconds, after "
            "saving the last finished iteration (a second signal exits at "
            "once, without saving)")

    def agreed_stop_signal(self) -> int:
        """The stop signal of any process (0 for none), agreed by all.

        A collective: every process must call it at the same point.
        """
        signum = stop.stop_requested()
        if is_distributed():
            flag = torch.tensor([signum], device=mmengine.device.get_device()
                                if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def stop_if_signalled(self) -> None:
        """On a stop signal, save the last finished iteration and stop.

        Called after each iteration, and by work between iterations that a
        signal cut short (sampling, validation). Processes agree on the
        iteration, so all of them save and stop at the same one. Before the
        first iteration there is nothing to save.

        Raises:
            TrainingInterruptedError: If any process got a stop signal.
        """
        signum = self.agreed_stop_signal()
        if not signum:
            return
        if not stop.stop_requested():  # a process that got none stops too
            stop.request_stop(signum)
        loop = self.train_loop
        if loop.iter == 0:
            raise TrainingInterruptedError(signum, None)
        filename = f"iter_{loop.iter}.pth"
        path = osp.join(self.work_dir, filename)
        self.save_checkpoint(self.work_dir, filename,
                             meta=dict(epoch=loop.epoch, iter=loop.iter))
        if is_main_process():
            write_last_checkpoint(self.work_dir, path)
        raise TrainingInterruptedError(signum, path)

    # ---- saving ------------------------------------------------------
    def save_checkpoint(self,
                        out_dir: str,
                        filename: str,
                        file_client_args=None,
                        save_optimizer: bool = True,
                        save_param_scheduler: bool = True,
                        meta: dict | None = None,
                        by_epoch: bool = True,
                        backend_args=None) -> None:
        """Write ``filename`` and ``step{iteration}/``, each atomically
        (see :mod:`diffengine.engine.checkpoint`)."""
        meta = checkpoint_meta(self, meta, by_epoch)
        model = self.bare_model
        checkpoint = build_checkpoint(self, model, meta, save_optimizer,
                                      save_param_scheduler)
        self.call_hook("before_save_checkpoint", checkpoint=checkpoint)
        # sharded weights and optimizer states, gathered by every process
        checkpoint = full_tensors(checkpoint)
        if not is_main_process():
            return
        os.makedirs(out_dir, exist_ok=True)
        path = osp.join(out_dir, filename)
        write_checkpoint(checkpoint, path, model, self.training_metadata(meta))
        self.logger.info(
            f"saved {path} and {STEP_DIR.format(meta['iter'])}/")

    def exported_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights a step folder written now would hold (see
        :func:`diffengine.engine.checkpoint.exported_state_dict`)."""
        return exported_state_dict(self)

    def training_metadata(self, meta: dict) -> dict[str, str]:
        """What a step file tells about its training run (see
        :func:`diffengine.engine.checkpoint.training_metadata`)."""
        return training_metadata(self, meta)

    # ---- loading -----------------------------------------------------
    def load_or_resume(self) -> None:
        if is_main_process():
            remove_stale_temporaries(self.work_dir)
        if self._has_loaded or not self._resume or self._load_from is not None:
            return super().load_or_resume()
        for path in self._resume_candidates():
            try:
                self.resume(path)
                return
            except CheckpointLoadError as err:
                self.logger.warning(f"{err}; trying an older checkpoint")
        self.logger.info(f"no checkpoint in {self.work_dir}: starting fresh")

    def _resume_candidates(self) -> list[str]:
        """The work dir's checkpoints, newest first.

        Newest by file time rather than ``last_checkpoint``: a kill between
        a checkpoint's rename and the update of ``last_checkpoint`` leaves a
        complete checkpoint that ``last_checkpoint`` does not name yet.
        """
        return sorted(glob.glob(osp.join(self.work_dir, "*.pth")),
                      key=osp.getmtime, reverse=True)

    def _load_model_state(self, checkpoint: dict, path: str) -> None:
        model = self.bare_model
        state = checkpoint["state_dict"]
        expected = set(model.state_dict())
        unexpected = sorted(set(state) - expected)
        missing = sorted(expected - set(state))
        if unexpected or missing:
            raise ConfigError(
                f"{path} does not match the model's LoRA layers: "
                f"{len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); was "
                "it trained with other denoiser (unet_lora_config, "
                "transformer_lora_config) or text_encoder_lora_config "
                "options?")
        model.load_state_dict(state, strict=False)
        self.logger.info(
            f"loaded {len(state)} LoRA tensors from {path}; the frozen base "
            "comes from the model config")

    def load_checkpoint(self, filename: str, map_location="cpu",
                        strict: bool = False, revise_keys=None) -> dict:
        checkpoint = load_checkpoint_file(filename, map_location)
        # A sharded model's processes each take their shard of the weights
        # (FullyShardWrapper); the others take them as they are.
        for key in ("state_dict", "ema_state_dict"):
            if key in checkpoint:
                checkpoint[key] = shard_state_dict(self.bare_model,
                                                   checkpoint[key])
        # As mmengine: hooks see (and may change) the checkpoint before the
        # model loads it; an EMA hook swaps its averages out of state_dict.
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        self._load_model_state(checkpoint, filename)
        return checkpoint

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location="cpu") -> None:
        checkpoint = self.load_checkpoint(filename, map_location)
        meta = checkpoint["meta"]
        if meta.get("world_size", self.world_size) != self.world_size:
            self.logger.warning(
                f"{filename} was written by {meta['world_size']} processes, "
                f"this run has {self.world_size}: the data order differs")
        self.train_loop._epoch = meta["epoch"]
        self.train_loop._iter = meta["iter"]
        self.message_hub.load_state_dict(checkpoint["message_hub"])
        if "optimizer" in checkpoint and resume_optimizer:
            self.optim_wrapper = self.build_optim_wrapper(self.optim_wrapper)
            self.optim_wrapper.load_state_dict(checkpoint["optimizer"])
            shard_optimizer_state(self.optim_wrapper.optimizer)
        if "param_schedulers" in checkpoint and resume_param_scheduler:
            self.param_schedulers = self.build_param_scheduler(
                self.param_schedulers)
            for scheduler, state in zip(self.param_schedulers,
                                        checkpoint["param_schedulers"],
                                        strict=True):
                scheduler.load_state_dict(state)
        # The run continues with the checkpoint's seeds and random states;
        # they are restored last so that nothing after them reseeds.
        self._seed = meta["seed"]
        self._randomness_cfg.update(seed=meta["seed"])
        sampler = seeded_sampler(self.train_dataloader)
        if meta.get("sampler_seed") is not None and hasattr(sampler, "seed"):
            sampler.seed = meta["sampler_seed"]
        restore_rng_state(meta["rng_state"])
        self._has_loaded = True
        self.logger.info(
            f"resumed from {filename}: epoch {self.epoch}, iteration "
            f"{self.iter}")

