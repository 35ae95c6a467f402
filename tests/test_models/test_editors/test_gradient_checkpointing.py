"""``gradient_checkpointing=True`` for every family: the denoiser's blocks
run their forward a second time in the backward pass, and the loss and the
adapters' gradients equal those of a step without checkpointing."""
import pytest
import torch

from diffengine.models import Flux, StableDiffusion, StableDiffusion3
from tests.conftest import adapted_model

FAMILIES = {
    "flux": (Flux, "tiny_flux"),
    "sd3.5": (StableDiffusion3, "tiny_sd3"),
    "sd1.5": (StableDiffusion, "tiny_sd"),
}


def build(family, request, **kwargs):
    model_class, fixture = FAMILIES[family]
    return adapted_model(model_class, request.getfixturevalue(fixture),
                         **kwargs)


def checkpointed_block(denoiser):
    """A module the denoiser checkpoints, after the first adapter (before
    it nothing needs a gradient): the first transformer block, or the UNet's
    last resnet (a UNet checkpoints inside its blocks)."""
    blocks = getattr(denoiser, "transformer_blocks", None)
    return blocks[0] if blocks is not None else (
        denoiser.up_blocks[-1].resnets[-1])


def step(model):
    """The loss, the adapters' gradients and how many times a checkpointed
    block ran its forward."""
    calls = []
    checkpointed_block(model.denoiser).register_forward_pre_hook(
        lambda module, args: calls.append(torch.is_grad_enabled()))
    generator = torch.Generator().manual_seed(0)
    inputs = {"img": torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1,
              "text": ["a red circle", "a blue square"], "seed": [5, 6]}
    loss = model(inputs, mode="loss")["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()
                           if p.requires_grad}, len(calls)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_checkpointing_recomputes_and_changes_no_gradient(family, request):
    plain = build(family, request)
    checkpointed = build(family, request, gradient_checkpointing=True)
    assert not plain.denoiser.is_gradient_checkpointing
    assert checkpointed.denoiser.is_gradient_checkpointing
    loss, grads, runs = step(plain)
    checkpointed_loss, checkpointed_grads, checkpointed_runs = step(
        checkpointed)
    assert (runs, checkpointed_runs) == (1, 2)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    assert grads.keys() == checkpointed_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=0,
                                   atol=1e-6, msg=name)
