"""The ``group_offloading`` option on real tiny models: a training step with
the frozen blocks in CPU memory gives the loss, the adapter gradients and
the updated adapters of a step without, with and without gradient
checkpointing; each group comes in once in the forward and once in the
backward pass; bad options fail in one line.

On a CPU both devices are the CPU, so a weight used while offloaded would
go unnoticed: here an offloaded weight holds NaN instead of its values
(:func:`poisoned`), which any such use spreads to the loss or gradients.
"""
import gc
import weakref

import pytest
import torch
from diffusers.hooks import apply_group_offloading
from diffusers.hooks.group_offloading import ModuleGroup

from diffengine.errors import ConfigError
from diffengine.models import (
    Flux,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
)
from diffengine.models.utils.offloading import (
    GroupOffloading,
    OffloadGroup,
    build_group_offloading,
)
from tests.conftest import adapted_model

FAMILIES = {
    "flux": (Flux, "tiny_flux"),
    "sd3.5": (StableDiffusion3, "tiny_sd3"),
    "sd1.5": (StableDiffusion, "tiny_sd"),
    "sdxl": (StableDiffusionXL, "tiny_sdxl"),
}


@pytest.fixture
def poisoned(monkeypatch):
    """Offloaded floating-point tensors hold NaN between uses."""
    monkeypatch.setattr(
        OffloadGroup, "offloaded", lambda self, stored: torch.full_like(
            stored, float("nan")) if stored.is_floating_point() else stored)


def build(family, request, **kwargs):
    model_class, fixture = FAMILIES[family]
    return adapted_model(model_class, request.getfixturevalue(fixture),
                         **kwargs)


def batch(size=32):
    generator = torch.Generator().manual_seed(0)
    return {"img": torch.rand(2, 3, size, size, generator=generator) * 2 - 1,
            "text": ["a red circle", "a blue square"], "seed": [5, 6],
            # SDXL's size conditioning, which the other families ignore
            "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]]
                                     * 2)}


def train_step(model):
    """The loss, the adapters' gradients and the adapters after one SGD
    step; a checkpointed block is recomputed to its end.

    SGD, not AdamW: AdamW's first step is about lr · sign(gradient), so a
    gradient of 1e-10 that sums its terms in another order (the UNet's skip
    connections) could flip an update by 2 lr.
    """
    trainable = {n: p for n, p in model.named_parameters()
                 if p.requires_grad}
    optimizer = torch.optim.SGD(trainable.values(), lr=1e-2)
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
        loss = model(batch(), mode="loss")["loss"]
        loss.backward()
    grads = {n: p.grad.clone() for n, p in trainable.items()}
    optimizer.step()
    return loss.detach(), grads, {n: p.detach().clone()
                                  for n, p in trainable.items()}


@pytest.mark.parametrize("family, options, checkpointing", [
    ("flux", dict(), False),
    ("flux", dict(), True),
    ("flux", dict(offload_type="leaf_level"), False),
    ("flux", dict(offload_type="leaf_level"), True),
    ("sd3.5", dict(num_blocks_per_group=2), False),
    ("sd3.5", dict(num_blocks_per_group=2), True),
    ("sd1.5", dict(), False),
    ("sd1.5", dict(), True),
    ("sdxl", dict(), False),
], ids=["flux", "flux-checkpointing", "flux-leaf",
        "flux-leaf-checkpointing", "sd3.5-2", "sd3.5-2-checkpointing",
        "sd1.5", "sd1.5-checkpointing", "sdxl"])
def test_a_step_equals_one_without_offloading(family, options, checkpointing,
                                              request, poisoned):
    loss, grads, updated = train_step(build(
        family, request, gradient_checkpointing=checkpointing))
    model = build(family, request, gradient_checkpointing=checkpointing,
                  group_offloading=options)
    assert model.offloader.groups
    offloaded_loss, offloaded_grads, offloaded_updated = train_step(model)
    torch.testing.assert_close(offloaded_loss, loss, rtol=0, atol=1e-6)
    assert grads.keys() == offloaded_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(offloaded_grads[name], grad, rtol=0,
                                   atol=1e-6, msg=name)
        torch.testing.assert_close(offloaded_updated[name], updated[name],
                                   rtol=0, atol=1e-6, msg=name)


def test_each_block_comes_in_for_its_forward_and_its_backward(
        request, poisoned, monkeypatch):
    model = build("flux", request, group_offloading=dict())
    denoiser = model.denoiser
    blocks = [*denoiser.transformer_blocks,
              *denoiser.single_transformer_blocks]
    groups = model.offloader.groups
    assert len(groups) == len(blocks)
    onloads = []
    onload = OffloadGroup.onload

    def counted(group, stream=None):
        if not group.resident:
            onloads.append((groups.index(group), torch.is_grad_enabled()))
        onload(group, stream)

    monkeypatch.setattr(OffloadGroup, "onload", counted)
    finite = []
    for block in blocks:
        # after the offloader's own pre-hook
        block.register_forward_pre_hook(lambda module, args: finite.append(
            all(torch.isfinite(p).all() for p in module.parameters())))
    loss = model(batch(), mode="loss")["loss"]
    forward = list(onloads)
    loss.backward()
    backward = onloads[len(forward):]
    assert all(finite) and len(finite) == len(blocks)
    # in order in the forward, in reverse in the backward (where autograd
    # turns gradient mode off), once each
    assert forward == [(i, True) for i in range(len(groups))]
    assert backward == [(i, False) for i in reversed(range(len(groups)))]
    # between uses every offloaded weight is in CPU memory (here: NaN)
    for group in groups:
        assert not group.resident
        assert all(torch.isnan(t).all() for t in group.tensors
                   if t.is_floating_point())
    # the adapters stay with the model, on its device
    assert all(torch.isfinite(p).all() and p.grad is not None
               for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("checkpointing", [False, True],
                         ids=["plain", "checkpointing"])
def test_no_device_copy_outlives_its_blocks_forward(checkpointing, request,
                                                    monkeypatch):
    """Autograd keeps no onloaded weight (nor a view of one, as Linear's
    W.t()) from the forward to the backward pass: each is made again."""
    copies = []

    def onloaded(group, stored, non_blocking):
        # a copy in its own memory, as on a GPU
        copy = stored.clone()
        copies.append(weakref.ref(copy.untyped_storage()))
        return copy

    monkeypatch.setattr(OffloadGroup, "onloaded", onloaded)
    model = build("flux", request, group_offloading=dict(),
                  gradient_checkpointing=checkpointing)
    loss = model(batch(), mode="loss")["loss"]
    gc.collect()
    assert copies and not any(ref() for ref in copies)
    loss.backward()
    gc.collect()
    assert not any(ref() for ref in copies)


def test_a_move_leaves_the_offloaded_blocks_in_cpu_memory(request):
    model = build("flux", request, group_offloading=dict())
    offloaded = {id(t) for g in model.offloader.groups for t in g.tensors}
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    # what .to(device) does, with a copy that shows which tensors moved
    model._apply(lambda t: t.clone())
    moved = {n for n, p in model.named_parameters()
             if p.data_ptr() != before[n]}
    kept = {n for n, p in model.named_parameters() if id(p) in offloaded}
    assert kept and moved and not kept & moved
    assert moved | kept == set(before)
    with pytest.raises(ConfigError, match=r"cannot be cast to torch\.float16"):
        model.half()


def test_diffusers_hooks_leave_the_backward_without_weights(request,
                                                            monkeypatch):
    """Why diffengine has its own offloader: diffusers' group offloading
    (inference) offloads a group after its forward and onloads nothing for
    the backward pass, so each backward would read weights in CPU memory."""
    model = build("flux", request)
    denoiser = model.denoiser
    state = {}
    for method in ("onload_", "offload_"):
        original = getattr(ModuleGroup, method)

        def logged(group, method=method, original=original):
            state[group] = method
            return original(group)

        monkeypatch.setattr(ModuleGroup, method, logged)
    apply_group_offloading(denoiser, onload_device="cpu",
                           offload_type="block_level", num_blocks_per_group=1)
    at_backward = []
    for block in (*denoiser.transformer_blocks,
                  *denoiser.single_transformer_blocks):
        group = block._diffusers_hook.get_hook("group_offloading").group
        block.register_full_backward_pre_hook(
            lambda module, grads, group=group: at_backward.append(
                state[group]))
    model(batch(), mode="loss")["loss"].backward()
    assert at_backward == ["offload_"] * 2


def test_bad_options_fail_in_one_line(request):
    assert build_group_offloading(None) is None
    assert build_group_offloading(dict()) == GroupOffloading(
        use_stream=torch.cuda.is_available())
    for options, message in [
        (dict(offload_device="cuda"), r"unknown keys \['offload_device'\]"),
        (dict(offload_type="model"), r"choose one of \['block_level', "
         r"'leaf_level'\]"),
        (dict(num_blocks_per_group=0), "num_blocks_per_group=0 must be"),
        (dict(non_blocking="yes"), "non_blocking='yes'; choose True or"),
        (dict(use_stream=False, record_stream=True),
         "record_stream=True needs use_stream=True"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_group_offloading(options)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="use_stream=True needs CUDA"):
            build_group_offloading(dict(use_stream=True))
    with pytest.raises(ConfigError, match="unquantized, uncompiled"):
        build("flux", request, group_offloading=dict(),
              compile_denoiser=True)
