"""LoRAEMAHook: the average's closed form, the checkpoint contract, and a
real run whose step folders and samples hold the average."""
import glob
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from diffengine.engine.checkpoint import load_checkpoint_file
from diffengine.engine.hooks import LoRAEMAHook
from diffengine.errors import ConfigError
from diffengine.inference import generate, load_pipeline, panel_box
from tests.test_engine.test_hooks.test_lora_checkpoint_hook import make_runner


class Toy(nn.Module):
    """Two trainable tensors and a frozen one, named as a model's."""

    def __init__(self):
        super().__init__()
        self.lora_a = nn.Parameter(torch.zeros(3))
        self.lora_b = nn.Parameter(torch.ones(2, 2))
        self.frozen = nn.Parameter(torch.ones(4), requires_grad=False)


def toy_runner():
    return SimpleNamespace(bare_model=Toy(), iter=0, _resume=True)


def train_toy(hook, runner, steps, seed=0):
    """Move the weights at random ``steps`` times; the weights after each."""
    generator = torch.Generator().manual_seed(seed)
    recorded = [{k: v.detach().clone() for k, v in hook.weights.items()}]
    for i in range(steps):
        runner.iter = i
        with torch.no_grad():
            for weight in hook.weights.values():
                weight.add_(torch.randn(weight.shape, generator=generator))
        hook.after_train_iter(runner, i)
        recorded.append({k: v.detach().clone()
                         for k, v in hook.weights.items()})
    return recorded


def test_before_run_and_after_train_iter_give_the_closed_form_average():
    momentum, steps = 0.2, 7
    hook, runner = LoRAEMAHook(momentum=momentum), toy_runner()
    hook.before_run(runner)
    assert set(hook.average) == {"lora_a", "lora_b"}  # not the frozen base
    recorded = train_toy(hook, runner, steps)
    for name in hook.average:
        # ema_k = (1 − m)^k w_0 + Σ_i m (1 − m)^(k − i) w_i
        expected = (1 - momentum)**steps * recorded[0][name] + sum(
            momentum * (1 - momentum)**(steps - i) * recorded[i][name]
            for i in range(1, steps + 1))
        torch.testing.assert_close(hook.average[name], expected)


def test_momentum_one_keeps_exactly_the_weights_and_begin_iter_waits():
    hook, runner = LoRAEMAHook(momentum=1.0), toy_runner()
    hook.before_run(runner)
    recorded = train_toy(hook, runner, 3)
    assert all(torch.equal(hook.average[k], recorded[-1][k])
               for k in hook.average)
    late = LoRAEMAHook(momentum=0.1, begin_iter=2)
    runner = toy_runner()
    late.before_run(runner)
    recorded = train_toy(late, runner, 2)
    assert all(torch.equal(late.average[k], recorded[-1][k])
               for k in late.average)
    with pytest.raises(ConfigError, match="momentum=0"):
        LoRAEMAHook(momentum=0)


def test_before_save_and_after_load_checkpoint_swap_and_restore():
    hook, runner = LoRAEMAHook(momentum=0.5), toy_runner()
    hook.before_run(runner)
    train_toy(hook, runner, 3)
    weights = {k: v.detach().clone() for k, v in hook.weights.items()}
    average = {k: v.clone() for k, v in hook.average.items()}
    checkpoint = {"state_dict": dict(weights)}
    hook.before_save_checkpoint(runner, checkpoint)
    # the model in the checkpoint is the average; the weights ride along
    assert all(torch.equal(checkpoint["state_dict"][k], average[k])
               for k in average)
    assert all(torch.equal(checkpoint["ema_state_dict"][k], weights[k])
               for k in weights)
    resumed, runner = LoRAEMAHook(momentum=0.5), toy_runner()
    resumed.before_run(runner)
    resumed.after_load_checkpoint(runner, checkpoint)
    assert all(torch.equal(checkpoint["state_dict"][k], weights[k])
               for k in weights)
    assert "ema_state_dict" not in checkpoint
    assert all(torch.equal(resumed.average[k], average[k]) for k in average)


def test_a_run_saves_and_samples_the_average(tmp_path, tiny_sd, shapes_data):
    prompts = ["a red circle"]
    vis = dict(type="VisualizationHook", prompt=prompts, seed=[1],
               by_epoch=False, interval=6, height=32, width=32,
               num_inference_steps=2)
    ema = make_runner(tmp_path / "ema", tiny_sd, shapes_data, interval=6,
                      custom_hooks=[dict(type="LoRAEMAHook", momentum=0.3),
                                    vis])
    ema.train()
    hook = next(h for h in ema.hooks if isinstance(h, LoRAEMAHook))
    saved = load_file(str(tmp_path / "ema" / "step6" /
                          "pytorch_lora_weights.safetensors"))
    averaged = ema.model.lora_state_dicts(hook.average)["unet"]
    live = ema.model.lora_state_dicts()["unet"]
    assert all(torch.equal(saved[f"unet.{k}"], v) for k, v in averaged.items())
    assert max((averaged[k] - live[k]).abs().max() for k in live) > 1e-4
    # the .pth holds both, the average as the model
    checkpoint = load_checkpoint_file(str(tmp_path / "ema" / "iter_6.pth"))
    assert all(torch.equal(checkpoint["ema_state_dict"][k], v.cpu())
               for k, v in ema.model.state_dict().items())
    assert all(torch.equal(checkpoint["state_dict"][k], v.cpu())
               for k, v in hook.average.items())
    # the sample grid is drawn with the average: demo on step6 reproduces it
    png, = glob.glob(str(tmp_path / "ema" / "**" / "vis_image" / "*.png"),
                     recursive=True)
    pipe = load_pipeline(tiny_sd, str(tmp_path / "ema" / "step6"))
    image, = generate(pipe, prompts[0], [1], height=32, width=32,
                      num_inference_steps=2)
    y, x = panel_box(0, 0, 32, 32)
    assert np.array_equal(np.asarray(Image.open(png))[y:y + 32, x:x + 32],
                          image)

    # momentum 1: exactly the step folder of a run without EMA
    plain = make_runner(tmp_path / "plain", tiny_sd, shapes_data, interval=6)
    plain.train()
    one = make_runner(tmp_path / "one", tiny_sd, shapes_data, interval=6,
                      custom_hooks=[dict(type="LoRAEMAHook", momentum=1.0)])
    one.train()
    files = [load_file(str(tmp_path / name / "step6" /
                           "pytorch_lora_weights.safetensors"))
             for name in ("plain", "one")]
    assert files[0].keys() == files[1].keys()
    assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])
