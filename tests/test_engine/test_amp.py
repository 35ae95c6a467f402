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
