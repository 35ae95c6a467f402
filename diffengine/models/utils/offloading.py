"""The ``group_offloading`` option: the frozen denoiser's blocks live in CPU
memory and each comes onto the training device just before it runs, in the
forward pass and again in the backward pass.

diffusers' ``apply_group_offloading`` is built for inference and cannot
train. Its hooks offload a group right after the group's forward by
rebinding each weight's ``.data`` to a CPU tensor, and nothing brings it
back for the backward pass; but autograd keeps what it needs of the
weights: norm and convolution weights by reference (the Parameter itself,
which then holds the CPU tensor: a device mismatch on CUDA) and a Linear's
as the view ``W.t()``, which keeps the device copy until the backward pass
(no memory saved). Gradient checkpointing does not help: the modules
outside the block lists are offloaded for the backward all the same, and a
recomputation onloads its block and either offloads it again before the
block's backward (run to its end) or, stopped early as torch does by
default, leaves it on the device for good. This module is the smallest
offloader that trains:

- a forward pre-hook onloads a group (copies its frozen tensors from CPU
  memory to the device) and a forward hook offloads it (rebinds them to the
  CPU copies, which frees the device copies);
- while a block runs, a saved view of one of its weights is saved as the
  weight and the view's geometry, and made again in the backward pass;
- the forward hook also passes the block's outputs through an identity
  autograd function whose backward onloads the group again: every backward
  node of the block waits for those gradients, so it runs after;
- in the backward pass a group stays on the device until the group before
  it comes in (autograd runs ready nodes latest-created first, so the later
  group's backward is done by then), and the last one leaves when the
  backward pass ends;
- with ``use_stream``, the group that runs next (the one before, in the
  backward pass) is copied on a side CUDA stream from pinned memory while
  the current one computes.

Only frozen tensors move. The adapters' parameters stay on the device, so
their gradients, the optimizer's state and its updates are those of a run
without offloading; so do the modules outside the block lists (embeddings,
the final norm and projection, a UNet's mid block).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from diffengine.errors import ConfigError

#: ``offload_type``: groups of consecutive blocks of each block list
#: (``transformer_blocks``, ``down_blocks``, ...), or each layer alone (an
#: adapted layer with its base layer).
OFFLOAD_TYPES = ("block_level", "leaf_level")
#: The keys of the option, named as diffusers' ``apply_group_offloading``
#: names its keyword arguments.
KEYS = ("offload_type", "num_blocks_per_group", "use_stream",
        "record_stream", "low_cpu_mem_usage", "non_blocking")


@dataclass(frozen=True)
class GroupOffloading:
    """How the frozen denoiser is offloaded.

    Attributes:
        offload_type (str): One of :data:`OFFLOAD_TYPES`. Defaults to
            ``"block_level"``.
        num_blocks_per_group (int): Blocks that move together
            (``block_level``). Defaults to 1.
        use_stream (bool): Copy the next group on a side CUDA stream while
            the current one computes, from pinned memory. Defaults to False.
        record_stream (bool): With ``use_stream``, mark each copy as used by
            the compute stream instead of waiting for that stream before
            freeing it: faster, a little more memory. Defaults to False.
        low_cpu_mem_usage (bool): Keep the CPU copies in pageable memory
            instead of pinning them (pinning copies the frozen denoiser
            once, at the move to CUDA); copies are then slower. Defaults to
            False.
        non_blocking (bool): Copy without waiting on the host (always so
            with ``use_stream``). Defaults to False.
    """

    offload_type: str = "block_level"
    num_blocks_per_group: int = 1
    use_stream: bool = False
    record_stream: bool = False
    low_cpu_mem_usage: bool = False
    non_blocking: bool = False


def build_group_offloading(options: dict | None) -> GroupOffloading | None:
    """The :class:`GroupOffloading` the ``group_offloading`` option asks for
    (None for None); ``use_stream=None`` is True where CUDA is available.

    Raises:
        ConfigError: For an unknown key or a bad value, or ``use_stream``
            without CUDA; the message names the key and its choices.
    """
    if options is None:
        return None
    options = dict(options)
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"group_offloading has unknown keys {unknown}; it takes "
            f"{', '.join(KEYS)}.")
    offload_type = options.get("offload_type", "block_level")
    if offload_type not in OFFLOAD_TYPES:
        raise ConfigError(
            f"group_offloading offload_type={offload_type!r}; choose one of "
            f"{list(OFFLOAD_TYPES)}.")
    blocks = options.get("num_blocks_per_group", 1)
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ConfigError(
            f"group_offloading num_blocks_per_group={blocks!r} must be an "
            "integer >= 1.")
    cuda = torch.cuda.is_available()
    if options.get("use_stream") is None:
        options["use_stream"] = cuda
    for key in KEYS[2:]:
        value = options.get(key, False)
        if not isinstance(value, bool):
            choices = "True, False or None" if key == "use_stream" else (
                "True or False")
            raise ConfigError(
                f"group_offloading {key}={value!r}; choose {choices}.")
    if options["use_stream"] and not cuda:
        raise ConfigError(
            "group_offloading use_stream=True needs CUDA, and none is "
            "available; set use_stream=None or False.")
    if options.get("record_stream") and not options["use_stream"]:
        raise ConfigError(
            "group_offloading record_stream=True needs use_stream=True.")
    return GroupOffloading(**{"offload_type": offload_type,
                              "num_blocks_per_group": blocks, **options})


class _OnloadForBackward(torch.autograd.Function):
    """Identity on a block's outputs whose backward onloads the block's
    group, before any backward node of the block can run."""

    @staticmethod
    def forward(ctx, group: OffloadGroup, *tensors: torch.Tensor):
        ctx.group = group
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ctx.group.offloader.onload_for_backward(ctx.group)
        return (None, *grads)


def storage(tensor: torch.Tensor) -> int:
    """The address of ``tensor``'s memory, which its views share."""
    return tensor.untyped_storage().data_ptr()


class OffloadGroup:
    """The frozen tensors of one group, which move together.

    Between uses each tensor's ``.data`` is its CPU copy, kept here; in use
    it is a device copy made from it, dropped when the group offloads.
    """

    def __init__(self, offloader: BlockOffloader,
                 tensors: list[torch.Tensor], index: int) -> None:
        self.offloader = offloader
        self.tensors = tensors
        self.index = index  # in the order the groups run
        self.stored = [t.data.cpu() for t in tensors]
        self.resident = False
        self.streamed = False  # copied on the side stream
        self.pending = False  # ... and not yet waited for
        for tensor, stored in zip(self.tensors, self.stored, strict=True):
            tensor.data = self.offloaded(stored)

    def offloaded(self, stored: torch.Tensor) -> torch.Tensor:
        """What a tensor holds between uses: its CPU copy."""
        return stored

    def onloaded(self, stored: torch.Tensor,
                 non_blocking: bool) -> torch.Tensor:
        """What a tensor holds in use: a copy of ``stored`` on the device
        (``stored`` itself when the device is the CPU)."""
        return stored.to(self.offloader.device, non_blocking=non_blocking)

    def pin(self) -> None:
        """Pin the CPU copies, for asynchronous copies to CUDA."""
        self.stored = [s if s.is_pinned() else s.pin_memory()
                       for s in self.stored]
        if not self.resident:
            for tensor, stored in zip(self.tensors, self.stored, strict=True):
                tensor.data = self.offloaded(stored)

    def onload(self, stream: torch.cuda.Stream | None = None) -> None:
        """Copy the tensors to the device (on ``stream`` if given)."""
        if self.resident:
            return
        non_blocking = self.offloader.options.non_blocking or (
            stream is not None)
        with torch.cuda.stream(stream) if stream is not None else (
                nullcontext()):
            for tensor, stored in zip(self.tensors, self.stored, strict=True):
                tensor.data = self.onloaded(stored, non_blocking)
        for index, tensor in enumerate(self.tensors):
            self.offloader.in_use[storage(tensor)] = (self, index)
        self.resident, self.streamed = True, stream is not None
        self.pending = self.streamed

    def wait(self) -> None:
        """Make the compute stream wait for a copy on the side stream."""
        if not self.pending:
            return
        current = torch.cuda.current_stream(self.offloader.device)
        current.wait_stream(self.offloader.stream)
        if self.offloader.options.record_stream:
            for tensor in self.tensors:
                tensor.data.record_stream(current)
        self.pending = False

    def offload(self) -> None:
        """Drop the device copies: the tensors hold their CPU copies."""
        if not self.resident:
            return
        if self.streamed and not self.offloader.options.record_stream:
            # memory copied on the side stream may be reused there as soon
            # as it is freed: the compute stream must be done with it
            torch.cuda.current_stream(self.offloader.device).synchronize()
        for tensor, stored in zip(self.tensors, self.stored, strict=True):
            self.offloader.in_use.pop(storage(tensor), None)
            tensor.data = self.offloaded(stored)
        self.resident = self.streamed = self.pending = False


class BlockOffloader:
    """Keeps the frozen blocks of ``denoiser`` in CPU memory and onloads
    each group for its forward and for its backward.

    The device is the denoiser's when this is built and, after, the one
    ``.to()`` (or ``.cuda()``) sends the denoiser to; such a move leaves the
    offloaded tensors in CPU memory (pinned, when the device is CUDA and
    ``low_cpu_mem_usage`` is off) and moves everything else.

    Args:
        denoiser (nn.Module): The denoiser, with its adapters injected.
        options (GroupOffloading): How to group and copy.
    """

    def __init__(self, denoiser: nn.Module, options: GroupOffloading) -> None:
        self.options = options
        self.device = next(denoiser.parameters()).device
        self.stream: torch.cuda.Stream | None = None
        self.groups: list[OffloadGroup] = []
        self.held: list[OffloadGroup] = []  # onloaded for the backward
        self.in_backward = False
        # the memory of each onloaded tensor: its group and index
        self.in_use: dict[int, tuple[OffloadGroup, int]] = {}
        self.saving: list[Any] = []  # saved-tensor hooks of running groups
        members = (self._block_groups(denoiser) if options.offload_type == (
            "block_level") else self._leaf_groups(denoiser))
        for modules, tensors in members:
            tensors = [t for t in tensors if not t.requires_grad]
            if not tensors:
                continue
            group = OffloadGroup(self, tensors, len(self.groups))
            for module in modules:
                module.register_forward_pre_hook(
                    partial(self._before_forward, group))
                module.register_forward_hook(partial(
                    self._after_forward, group, module is modules[-1]))
            self.groups.append(group)
        self.offloaded_ids = {id(t) for g in self.groups for t in g.tensors}
        # what .to(), .cuda(), .half() call, from the model's own _apply
        denoiser._apply = partial(self._move, denoiser)

    def describe(self) -> str:
        """How much is offloaded, for the log: groups and MiB."""
        size = sum(t.numel() * t.element_size() for group in self.groups
                   for t in group.stored)
        return f"{len(self.groups)} groups, {size / 2**20:.1f} MiB"

    def _block_groups(self, denoiser: nn.Module) -> list[tuple[list, list]]:
        """Consecutive blocks of each block list, in the order they run,
        with all their tensors."""
        size = self.options.num_blocks_per_group
        groups = []
        for child in denoiser.children():
            if isinstance(child, (nn.ModuleList, nn.Sequential)):
                for i in range(0, len(child), size):
                    blocks = list(child[i:i + size])
                    groups.append((blocks, [
                        t for block in blocks
                        for t in (*block.parameters(), *block.buffers())]))
        return groups

    def _leaf_groups(self, denoiser: nn.Module) -> list[tuple[list, list]]:
        """Each adapted layer with its base layer (DoRA reads the base
        weight outside the base layer's forward) and each other module with
        tensors of its own, with those tensors."""
        groups, adapted = [], []
        for name, module in denoiser.named_modules():
            if any(name.startswith(prefix) for prefix in adapted):
                continue
            if isinstance(module, BaseTunerLayer):
                adapted.append(f"{name}.")
                groups.append(([module], [*module.parameters(),
                                          *module.buffers()]))
            else:
                groups.append(([module], [
                    *module.parameters(recurse=False),
                    *module.buffers(recurse=False)]))
        return groups

    # ---- hooks ---------------------------------------------------------
    def _before_forward(self, group: OffloadGroup, module: nn.Module,
                        args: Any) -> None:
        group.onload()
        group.wait()
        # Autograd would save a weight's view (Linear's W.t()) with the
        # device memory under it until the backward pass: save how to make
        # it again instead. Not inside a checkpointed block, whose own hooks
        # keep nothing (one saved-tensor hook applies at a time).
        hooks = None
        if torch.is_grad_enabled() and (
                torch._C._autograd._top_saved_tensors_default_hooks(False)
                is None):
            hooks = torch.autograd.graph.saved_tensors_hooks(
                self._pack, self._unpack)
            hooks.__enter__()
        self.saving.append(hooks)
        if self.stream is not None and not self.in_backward and (
                group.index + 1 < len(self.groups)):
            self.groups[group.index + 1].onload(self.stream)

    def _after_forward(self, group: OffloadGroup, last: bool,
                       module: nn.Module, args: Any, output: Any) -> Any:
        hooks = self.saving.pop() if self.saving else None
        if hooks is not None:
            hooks.__exit__(None, None, None)
        if torch.is_grad_enabled():
            leaves, spec = tree_flatten(output)
            index = [i for i, leaf in enumerate(leaves)
                     if isinstance(leaf, torch.Tensor) and leaf.requires_grad]
            if index:
                wrapped = _OnloadForBackward.apply(
                    group, *(leaves[i] for i in index))
                for i, tensor in zip(index, wrapped, strict=True):
                    leaves[i] = tensor
                output = tree_unflatten(leaves, spec)
        # a checkpointed block recomputed in the backward pass keeps its
        # group until the backward pass has gone through it
        if last and group not in self.held:
            group.offload()
        return output

    def _pack(self, tensor: torch.Tensor) -> Any:
        """A saved tensor, or, for a view of an onloaded weight, the weight's
        group, index and the view's geometry."""
        if tensor.layout != torch.strided or (
                tensor.device != self.device):
            return tensor
        found = self.in_use.get(storage(tensor))
        if found is None or found[0].tensors[found[1]].dtype != tensor.dtype:
            return tensor
        return (*found, tensor.size(), tensor.stride(),
                tensor.storage_offset())

    def _unpack(self, packed: Any) -> torch.Tensor:
        """The saved tensor, remade from its weight, onloaded by now."""
        if isinstance(packed, torch.Tensor):
            return packed
        group, index, size, stride, offset = packed
        return group.tensors[index].data.as_strided(size, stride, offset)

    def onload_for_backward(self, group: OffloadGroup) -> None:
        """Onload ``group`` for its backward: the groups after it are
        done."""
        if not self.in_backward:
            self.in_backward = True
            torch.autograd.Variable._execution_engine.queue_callback(
                self._backward_done)
        if group in self.held:
            return
        for other in self.held:
            other.offload()
        self.held = [group]
        group.onload()
        group.wait()
        if self.stream is not None and group.index > 0:
            self.groups[group.index - 1].onload(self.stream)

    def _backward_done(self) -> None:
        for group in self.groups:
            group.offload()
        self.held, self.in_backward = [], False
        # a recomputation that stopped early left its entries (None)
        self.saving.clear()

    # ---- moves -----------------------------------------------------------
    def _move(self, denoiser: nn.Module, fn: Any,
              recurse: bool = True) -> nn.Module:
        """``denoiser._apply``: ``fn`` on every tensor but the offloaded
        ones, whose device becomes the one ``fn`` sends tensors to."""
        probe = fn(torch.empty(0, device=self.device))
        if probe.dtype != torch.float32:
            raise ConfigError(
                f"the denoiser is offloaded (group_offloading): it cannot be "
                f"cast to {probe.dtype} after loading; set weight_dtype.")
        for module in denoiser.modules():
            for table in (module._parameters, module._buffers):
                for key, tensor in table.items():
                    if tensor is None or id(tensor) in self.offloaded_ids:
                        continue
                    with torch.no_grad():
                        moved = fn(tensor)
                    if isinstance(tensor, nn.Parameter):
                        tensor.data = moved
                        if tensor.grad is not None:
                            tensor.grad.data = fn(tensor.grad)
                    else:
                        table[key] = moved
        self.device = probe.device
        if self.device.type == "cuda":
            if not self.options.low_cpu_mem_usage:
                for group in self.groups:
                    group.pin()
            if self.options.use_stream and self.stream is None:
                self.stream = torch.cuda.Stream(self.device)
        return denoiser
