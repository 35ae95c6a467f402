"""LoRAOptimWrapperConstructor: the optimizer over the adapters alone."""
import torch

from diffengine.engine import LoRAOptimWrapperConstructor
from diffengine.models import StableDiffusion
from tests.conftest import UNET_TARGETS


def optimizer_params(optim_wrapper):
    return [p for g in optim_wrapper.optimizer.param_groups for p in g["params"]]


def test_the_optimizer_holds_only_the_trainable_parameters(tiny_sd):
    model = StableDiffusion(tiny_sd, unet_lora_config=dict(
        r=2, target_modules=UNET_TARGETS))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim_wrapper = LoRAOptimWrapperConstructor(dict(
        optimizer=dict(type="AdamW", lr=1e-3)))(model)
    assert optimizer_params(optim_wrapper) == trainable
    # on a CPU the optimizer keeps torch's default implementation
    assert not optim_wrapper.optimizer.defaults["fused"]

    # per-parameter options: the frozen parameters' groups are dropped
    optim_wrapper = LoRAOptimWrapperConstructor(
        dict(optimizer=dict(type="AdamW", lr=1e-3)),
        paramwise_cfg=dict(custom_keys={"lora_B": dict(lr_mult=0.5)}))(model)
    groups = optim_wrapper.optimizer.param_groups
    assert all(g["params"] for g in groups)
    assert {id(p) for p in optimizer_params(optim_wrapper)} == {
        id(p) for p in trainable}
    lrs = {g["lr"] for g in groups}
    assert lrs == {1e-3, 5e-4}
    optim_wrapper.optimizer.step()  # an optimizer over these groups works
    assert all(p.dtype == torch.float32 for p in trainable)
