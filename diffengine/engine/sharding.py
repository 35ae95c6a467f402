"""The frozen base sharded across processes with FSDP2 (``fully_shard``).

With ``model_wrapper_cfg=dict(type="FullyShardWrapper")`` and N processes
(``--launcher pytorch``, ``torchrun``), each process holds 1/N of the
denoiser, and gathers a block's weights only while it runs. The adapters
inside those blocks are sharded too; FSDP2 averages their gradients across
processes as DDP does, so N processes × batch B train the adapters of 1
process × batch N·B.

Checkpoints stay what a DDP run writes: :func:`full_tensors` gathers the
sharded weights and optimizer states into plain tensors (every process
takes part), which the main process writes; on resume
:func:`shard_state_dict` and :func:`shard_optimizer_state` give each
process its shard of them again.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.utils import apply_to
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from diffengine.registry import MODEL_WRAPPERS

WRAPPER = "FullyShardWrapper"


def outermost_blocks(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The modules of the ``ModuleList``\\ s in ``module`` that no other
    ``ModuleList`` holds."""
    for child in module.children():
        if isinstance(child, torch.nn.ModuleList):
            yield from child
        else:
            yield from outermost_blocks(child)


def shard_blocks(part: torch.nn.Module, mesh: DeviceMesh,
                 reshard_after_forward: bool) -> int:
    """``fully_shard`` each module of ``part``'s outermost ``ModuleList``\\ s
    (a transformer's blocks, a UNet's down and up blocks), then ``part``
    itself, which takes the parameters left over (embeddings, a UNet's mid
    block, norms).

    Returns:
        int: The number of blocks sharded, ``part`` left out.
    """
    blocks = list(outermost_blocks(part))
    for block in blocks:
        fully_shard(block, mesh=mesh,
                    reshard_after_forward=reshard_after_forward)
    fully_shard(part, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return len(blocks)


def full_tensors(obj: Any) -> Any:
    """``obj`` with each sharded tensor (``DTensor``) in it gathered into a
    plain tensor on the CPU.

    A collective when ``obj`` holds any: every process calls it on the same
    structure.
    """
    def gather(tensor: DTensor) -> torch.Tensor:
        # gathered on the mesh's device (a hook may have moved the shard)
        device = tensor.device_mesh.device_type
        return tensor.to(device).full_tensor().cpu()

    return apply_to(obj, lambda x: isinstance(x, DTensor), gather)


def shard_like(tensor: torch.Tensor, like: DTensor) -> DTensor:
    """This process's shard of the full ``tensor``, laid out as ``like``;
    every process holds the same ``tensor``, so nothing is sent."""
    return distribute_tensor(tensor.to(like.device, like.dtype),
                             like.device_mesh, like.placements,
                             src_data_rank=None)


def shard_state_dict(model: torch.nn.Module,
                     state: dict[str, torch.Tensor]) -> dict:
    """``state`` (full tensors, as a checkpoint holds them) with each
    tensor whose parameter of ``model`` is sharded cut to this process's
    shard; the others as they are."""
    params = dict(model.named_parameters())
    return type(state)(
        (k, shard_like(v, params[k]) if isinstance(params.get(k), DTensor)
         and not isinstance(v, DTensor) else v) for k, v in state.items())


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Cut the full states that ``optimizer.load_state_dict`` gave each
    sharded parameter (Adam's moments) to this process's shard."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not isinstance(param, DTensor):
                continue
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and not isinstance(
                        value, DTensor) and value.shape == param.shape):
                    state[key] = shard_like(value, param)


@MODEL_WRAPPERS.register_module()
class FullyShardWrapper(torch.nn.Module):
    """Shard the frozen base (and the adapters in it) across processes with
    FSDP2's ``fully_shard``.

    Over a mesh of every process (``"cuda"`` with CUDA, else ``"cpu"`` with
    gloo), each module of the outermost ``ModuleList``\\ s of the denoiser
    (Flux's double and single blocks, SD3's blocks, a UNet's down and up
    blocks) is sharded, then the denoiser itself (what is left: embeddings,
    a UNet's mid block). The text encoders and the VAE, frozen, stay whole
    on every process. Text-encoder adapters are refused for now (see
    :data:`~diffengine.engine.config_check.NOT_SHARDABLE`).

    Select it with ``model_wrapper_cfg=dict(type="FullyShardWrapper")`` and
    run ``mim train diffengine CONFIG --gpus N --launcher pytorch`` or
    ``torchrun``. A single process (no launcher) trains unwrapped.

    Args:
        module (BaseModel): The model (a ``LatentDiffusionModel``).
        reshard_after_forward (bool): Free each block's gathered weights
            after its forward and gather them again for the backward (less
            memory); False keeps them from forward to backward (less
            communication). Defaults to True.
    """

    def __init__(self, module: BaseModel,
                 reshard_after_forward: bool = True) -> None:
        super().__init__()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.mesh = init_device_mesh(device, (dist.get_world_size(), ))
        # Every process initialised its adapters from the same seed, unless
        # randomness.diff_rank_seed: the main process's are the ones.
        for param in module.parameters():
            if param.requires_grad:
                dist.broadcast(param.data, src=0)
        self.sharded_parts = [module.denoiser_name]
        blocks = {name: shard_blocks(getattr(module, name), self.mesh,
                                     reshard_after_forward)
                  for name in self.sharded_parts}
        unsharded = [n for n, p in module.named_parameters()
                     if p.requires_grad and not isinstance(p, DTensor)]
        if unsharded:
            raise RuntimeError(
                f"{WRAPPER} left trainable parameters unsharded, whose "
                f"gradients no process would average: {unsharded[:3]}")
        # The model as FSDP2's root, holding none of the rest (VAE, text
        # encoders): its forward, which training calls, starts and ends
        # each step's gathers and gradient reductions.
        fully_shard(module, mesh=self.mesh, ignored_params={
            p for p in module.parameters() if not isinstance(p, DTensor)})
        self.module = module
        print_log(
            f"{WRAPPER}: sharded over {self.mesh.size()} processes, each "
            "holding " + ", ".join(
                f"{fraction:.1%} of {name} ({blocks[name]} blocks)"
                for name, fraction in self.held_fractions().items()),
            logger="current")

    def train_step(self, data: dict | tuple | list,
                   optim_wrapper: OptimWrapper) -> dict[str, torch.Tensor]:
        """One step, as mmengine's ``MMDistributedDataParallel`` takes it:
        preprocess, forward, loss, backward (FSDP2 averages the sharded
        gradients) and the optimizer step."""
        with optim_wrapper.optim_context(self):
            data = self.module.data_preprocessor(data, training=True)
            losses = self.module(**data, mode="loss")
        parsed_loss, log_vars = self.module.parse_losses(losses)
        optim_wrapper.update_params(parsed_loss)
        return log_vars

    def val_step(self, data: dict | tuple | list) -> list:
        """The model's ``val_step``."""
        return self.module.val_step(data)

    def test_step(self, data: dict | tuple | list) -> list:
        """The model's ``test_step``."""
        return self.module.test_step(data)

    def held_fractions(self) -> dict[str, float]:
        """For each sharded part, the share of its parameters (by count)
        that this process holds: about 1/N of N processes."""
        fractions = {}
        for name in self.sharded_parts:
            params = list(getattr(self.module, name).parameters())
            local = sum((p.to_local() if isinstance(p, DTensor) else p).numel()
                        for p in params)
            fractions[name] = local / sum(p.numel() for p in params)
        return fractions
