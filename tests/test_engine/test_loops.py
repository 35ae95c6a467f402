"""The resumable training loops: positioning a loader mid-epoch, and on a
real runner an iteration-based run resumed from a checkpoint that ends with
the weights of one never stopped."""
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from diffengine.adapter_file import weights_path
from diffengine.engine.loops import position
from diffengine.errors import ConfigError
from tests.conftest import UNET_CONV_TARGETS
from tests.test_engine.test_hooks.test_lora_checkpoint_hook import make_runner


@pytest.mark.parametrize("model", [None, dict(unet_lora_config=dict(
    type="LoHa", r=2, alpha=3, target_modules=UNET_CONV_TARGETS))])
def test_iteration_based_resume_is_bit_exact(tmp_path, tiny_sd, shapes_data,
                                             model):
    """12 iterations straight, or 8 then a resume from iteration 8."""
    def run(work_dir, max_iters, **kwargs):
        runner = make_runner(work_dir, tiny_sd, shapes_data, model=model,
                             interval=4, max_keep_ckpts=-1)
        runner._train_loop = dict(by_epoch=False, max_iters=max_iters)
        for key, value in kwargs.items():
            setattr(runner, key, value)
        runner.train()
        return runner

    run(tmp_path / "straight", 12)
    run(tmp_path / "first", 8)
    resumed = run(tmp_path / "first", 12, _resume=True)
    # 24 images, batch 2: iteration 12 starts the second pass over the data
    assert resumed.iter == 12
    straight = load_file(weights_path(str(tmp_path / "straight" / "step12")))
    again = load_file(weights_path(str(tmp_path / "first" / "step12")))
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_resuming_mid_epoch_needs_a_sampler_that_skips():
    loader = DataLoader(list(range(8)), batch_size=2)
    with pytest.raises(ConfigError, match="DeterministicSampler"):
        position(loader, 0, 1)
