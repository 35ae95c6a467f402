import pytest
import torch
from mmengine.config import Config

from diffengine.engine import fall_back_from_amp_without_cuda


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_amp_falls_back_to_fp32_with_one_warning():
    cfg = Config(dict(optim_wrapper=dict(
        type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic",
        optimizer=dict(type="AdamW", lr=1e-4))))
    with pytest.warns(UserWarning, match="CUDA is not available") as record:
        fall_back_from_amp_without_cuda(cfg)
    assert len(record) == 1
    assert cfg.optim_wrapper.to_dict() == dict(
        type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4))


def test_other_wrappers_are_left_alone():
    cfg = Config(dict(optim_wrapper=dict(type="OptimWrapper")))
    fall_back_from_amp_without_cuda(cfg)
    assert cfg.optim_wrapper.type == "OptimWrapper"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_a_float16_base_falls_back_too_in_the_same_warning():
    cfg = Config(dict(
        model=dict(type="StableDiffusion", weight_dtype="float16"),
        optim_wrapper=dict(type="AmpOptimWrapper", dtype="float16",
                           optimizer=dict(type="AdamW", lr=1e-4))))
    with pytest.warns(UserWarning, match=r"training in fp32, with "
                      r"OptimWrapper .*, the frozen base in float32 instead "
                      r"of weight_dtype='float16'") as record:
        fall_back_from_amp_without_cuda(cfg)
    assert len(record) == 1
    assert cfg.model.weight_dtype is None
    cfg = Config(dict(model=dict(weight_dtype="bfloat16")))
    fall_back_from_amp_without_cuda(cfg)  # CPUs run bfloat16 well
    assert cfg.model.weight_dtype == "bfloat16"
