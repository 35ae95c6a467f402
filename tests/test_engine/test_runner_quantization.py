"""A quantized frozen base end to end: `mim train` of the tiny Flux and
SD3.5 seed configs on an int8 and a float8 base, each step folder loaded
into the unquantized diffusers pipeline within the quantization error.
Resume and 2 processes = 1 on a quantized base are the ``flux-int8`` and
``sd3-float8`` entries of test_runner_techniques' BASES."""
import json

import pytest
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors import safe_open

from tests.test_engine.test_runner_flux import DEV
from tests.test_engine.test_runner_sd3 import (
    MEDIUM,
    shrink,
    write_stripes_folder,
)
from tests.test_models.test_utils.test_quantization import (
    RELOAD_BOUND,
    reload_error,
)
from tests.test_tools.test_train import mim_train, trained_model


@pytest.fixture(scope="module")
def stripes(tmp_path_factory) -> str:
    return write_stripes_folder(
        tmp_path_factory.mktemp("data") / "quantized-stripes")


@pytest.mark.parametrize("config, fixture, pipeline_class", [
    (DEV, "tiny_flux", FluxPipeline),
    (MEDIUM, "tiny_sd3", StableDiffusion3Pipeline),
], ids=["flux", "sd3.5"])
@pytest.mark.parametrize("backend, weights", [("torchao", "int8"),
                                              ("quanto", "float8")])
def test_mim_train_on_a_quantized_base_loads_into_the_full_one(
        config, fixture, pipeline_class, backend, weights, request,
        tmp_path, stripes):
    tiny = request.getfixturevalue(fixture)
    work = tmp_path / "work"
    # fp32 around the quantized weights, so that the rebuilt model below is
    # the one that trained
    options = shrink(tiny, stripes, work, "model.weight_dtype=float32",
                     f"model.quantization.backend={backend}",
                     f"model.quantization.weights={weights}")
    mim_train(config, tmp_path, *options)
    assert sorted(p.name for p in work.glob("step*")) == ["step1", "step2"]
    step = work / "step2"
    assert [p.name for p in step.iterdir()] == [
        "pytorch_lora_weights.safetensors"]
    with safe_open(str(step / "pytorch_lora_weights.safetensors"),
                   "pt") as f:
        assert all("lora" in k for k in f.keys())  # noqa: SIM118
        assert json.loads(f.metadata()["diffengine.quantization"]) == dict(
            backend=backend, weights=weights, text_encoders=False)
    model = trained_model(config, work, "iter_2.pth", *options)
    error, bare_error, change = reload_error(model, pipeline_class, tiny,
                                             str(step))
    print(f"mim train {fixture} {backend} {weights}: reload error "
          f"{error:.2e} = {error / bare_error:.2f} x the bare base's "
          f"{bare_error:.2e}; the adapters change the output by "
          f"{change:.2e}")
    assert 0 < error <= RELOAD_BOUND * bare_error
    assert change > error  # the step folder did load
