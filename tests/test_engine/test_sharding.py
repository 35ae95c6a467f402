"""FullyShardWrapper on SD 1.x, SDXL, SD3.5 and Flux in 2 gloo processes:
each holds about half of the denoiser, one
step's gradients, clipped norm and gathered weights equal an unsharded
model's, and a full state dict loads back into the shards; and what it
refuses, in one line each."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from diffengine.engine.config_check import check_config
from diffengine.engine.sharding import (
    FullyShardWrapper,
    full_tensors,
    shard_state_dict,
)
from diffengine.errors import ConfigError
from diffengine.models import Flux, StableDiffusion, StableDiffusion3, StableDiffusionXL
from tests.conftest import SD3_TARGETS, TEXT_TARGETS, UNET_TARGETS, perturb_lora

# each family: its class, its denoiser's adapter option and targets
FAMILIES = {
    "sd": (StableDiffusion, "unet_lora_config", UNET_TARGETS),
    "sdxl": (StableDiffusionXL, "unet_lora_config", UNET_TARGETS),
    "sd3": (StableDiffusion3, "transformer_lora_config", SD3_TARGETS),
    "flux": (Flux, "transformer_lora_config", SD3_TARGETS),
}


def batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"img": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
            "text": ["a red circle", "a blue square"],
            "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32, 32]] * 2),
            "seed": [5, 6]}


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def shard_and_step(rank: int, bases: dict[str, str], init_file: str) -> None:
    """In each of 2 processes, for each family: the same batch through the
    sharded model and through an unsharded copy."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=2)
    for family, base in bases.items():
        model_class, option, targets = FAMILIES[family]
        torch.manual_seed(0)  # the same adapters in both processes
        model = model_class(base, **{option: dict(r=4, target_modules=targets)})
        perturb_lora(model)  # LoRA B is zero at first, and A's gradient too
        reference = copy.deepcopy(model)
        wrapper = FullyShardWrapper(model)
        fractions = wrapper.held_fractions()
        assert set(fractions) == {model.denoiser_name}, family
        assert 0.45 < fractions[model.denoiser_name] < 0.55, (family, fractions)
        # the text encoders and the VAE stay whole
        assert not any(isinstance(p, DTensor) for p in model.vae.parameters()
                       ) and not any(isinstance(p, DTensor)
                                     for p in model.text_encoder.parameters())

        # through the root's forward, as training calls it
        model(batch())["loss"].backward()
        reference(batch())["loss"].backward()
        sharded, whole = trainable(model), trainable(reference)
        assert sharded.keys() == whole.keys()
        assert all(isinstance(p, DTensor) for p in sharded.values()), family
        # the same sums, computed on gathered weights: fp32 rounding apart
        error = {n: ((p.grad.full_tensor() - whole[n].grad).abs().max()
                     / whole[n].grad.abs().max()).item()
                 for n, p in sharded.items()}
        if rank == 0:
            print(f"{family}: gradients within {max(error.values()):.1e}")
        assert max(error.values()) <= 1e-4, (family, error)
        norm = torch.nn.utils.clip_grad_norm_(list(sharded.values()), 1e-3)
        whole_norm = torch.nn.utils.clip_grad_norm_(list(whole.values()), 1e-3)
        assert abs(norm.full_tensor().item() - whole_norm.item()) <= 1e-5 * (
            whole_norm.item()), family

        # what a checkpoint holds, and its way back into the shards
        state = full_tensors(model.state_dict())
        assert all(type(v) is torch.Tensor and torch.equal(
            v, reference.state_dict()[k]) for k, v in state.items()), family
        zeros = {k: torch.zeros_like(v) for k, v in state.items()}
        model.load_state_dict(shard_state_dict(model, zeros), strict=False)
        assert all(not p.to_local().any() for p in sharded.values()), family
        model.load_state_dict(shard_state_dict(model, state), strict=False)
        assert all(torch.equal(v, state[k]) for k, v in full_tensors(
            model.state_dict()).items()), family
    dist.destroy_process_group()


def test_each_family_shards_in_halves_and_steps_as_one_process(
        tmp_path, tiny_sd, tiny_sdxl, tiny_sd3, tiny_flux):
    bases = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3,
             "flux": tiny_flux}
    mp.spawn(shard_and_step, args=(bases, str(tmp_path / "init")),
             nprocs=2)


SHARDED = dict(model_wrapper_cfg=dict(type="FullyShardWrapper"))


@pytest.mark.parametrize("cfg, line", [
    (dict(model=dict(type="Flux", model="x", quantization=dict(
        backend="torchao", weights="int8"))),
     "model_wrapper_cfg FullyShardWrapper does not support model.quantization "
     "yet: FSDP2 cannot shard quantized weights; drop it, or use DDP "
     "(model_wrapper_cfg=None)."),
    (dict(model=dict(type="Flux", model="x", group_offloading=dict())),
     "model_wrapper_cfg FullyShardWrapper does not support "
     "model.group_offloading yet: FSDP2 already keeps 1/N of the denoiser on "
     "each process, and both would move the same weights; drop it, or use "
     "DDP (model_wrapper_cfg=None)."),
    (dict(model=dict(type="Flux", model="x", text_encoder_lora_config=dict(
        r=2, target_modules=TEXT_TARGETS))),
     "model_wrapper_cfg FullyShardWrapper does not support "
     "model.text_encoder_lora_config yet: the text encoders stay whole on "
     "every process, and their adapters' gradients would not be averaged; "
     "drop it, or use DDP (model_wrapper_cfg=None)."),
    (dict(custom_hooks=[dict(type="VisualizationHook", prompt=["a"])]),
     "model_wrapper_cfg FullyShardWrapper does not support custom_hooks "
     "VisualizationHook yet: it samples on the main process alone, which a "
     "sharded denoiser cannot; remove it, or use DDP "
     "(model_wrapper_cfg=None)."),
    (dict(val_dataloader=dict(batch_size=1), val_cfg=dict()),
     "model_wrapper_cfg FullyShardWrapper does not support val_cfg yet: "
     "processes would run different numbers of validation batches, and each "
     "sharded forward needs all of them; set val_dataloader=None "
     "val_cfg=None val_evaluator=None, or use DDP (model_wrapper_cfg=None)."),
    (dict(model_wrapper_cfg=dict(type="FullyShardWrapper",
                                 reshard_after_backward=True)),
     "model_wrapper_cfg.reshard_after_backward is not an option of "
     "FullyShardWrapper. Did you mean 'reshard_after_forward'?"),
], ids=["quantization", "offloading", "text-encoder-lora", "visualization",
        "validation", "option"])
def test_what_sharding_refuses_is_one_line_naming_the_fix(cfg, line):
    with pytest.raises(ConfigError) as error:
        check_config({**SHARDED, **cfg})
    assert str(error.value) == line
    # without the wrapper, the same config passes
    check_config({k: v for k, v in cfg.items() if k != "model_wrapper_cfg"})
