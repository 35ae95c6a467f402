"""``model.group_offloading`` end to end: `mim train` of the tiny Flux
[dev] seed config with the transformer's frozen blocks in CPU memory writes
the step files of the run without, within 1e-6."""
import pytest
import torch
from safetensors.torch import load_file

from tests.test_engine.test_runner_flux import DEV
from tests.test_engine.test_runner_sd3 import shrink, write_stripes_folder
from tests.test_tools.test_train import mim_train


@pytest.fixture(scope="module")
def stripes(tmp_path_factory) -> str:
    return write_stripes_folder(
        tmp_path_factory.mktemp("data") / "offloading-stripes")


def test_mim_train_with_offloaded_blocks_writes_the_same_steps(
        tmp_path, tiny_flux, stripes):
    steps = {}
    for name, extra in [
        ("plain", []),
        ("offloaded", ["model.group_offloading.offload_type=block_level",
                       "model.group_offloading.num_blocks_per_group=1"]),
    ]:
        work = tmp_path / name
        options = shrink(tiny_flux, stripes, work, *extra)
        log = mim_train(DEV, tmp_path, *options)
        assert ("group_offloading: 2 groups" in log) == bool(extra)
        steps[name] = load_file(
            str(work / "step2" / "pytorch_lora_weights.safetensors"))
    assert steps["plain"].keys() == steps["offloaded"].keys()
    # LoRA's B starts at zero: the steps trained
    assert any(w.abs().max() > 0 for k, w in steps["plain"].items()
               if "lora_B" in k)
    for key, weight in steps["plain"].items():
        torch.testing.assert_close(steps["offloaded"][key], weight, rtol=0,
                                   atol=1e-6, msg=key)
