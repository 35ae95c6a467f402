"""Earlier names keep working: registry names that configs write, Python
names that code imports, method names that code calls."""
import warnings

import pytest
import torch

from diffengine.models import DiffusionDataPreprocessor, SDDataPreprocessor
from diffengine.models.adapter_io import AdapterIO
from diffengine.models.utils.timesteps import UniformTimeSteps
from diffengine.registry import MODELS


@pytest.mark.parametrize("earlier, current", [
    ("SDDataPreprocessor", DiffusionDataPreprocessor),
    ("TimeSteps", UniformTimeSteps),
])
def test_a_config_may_name_the_earlier_type(earlier, current):
    assert MODELS.get(earlier) is current
    assert type(MODELS.build(dict(type=earlier))) is current


def test_the_earlier_preprocessor_name_imports_and_batches():
    from diffengine.models import editors
    assert SDDataPreprocessor is editors.SDDataPreprocessor
    assert SDDataPreprocessor is DiffusionDataPreprocessor
    batch = MODELS.build(dict(type="SDDataPreprocessor"))(
        {"inputs": {"img": [torch.zeros(3, 2, 2), torch.ones(3, 2, 2)],
                    "text": ["a", "b"]}})
    assert batch["inputs"]["img"].shape == (2, 3, 2, 2)
    assert batch["inputs"]["text"] == ["a", "b"]


class Host(AdapterIO):
    """Just what the earlier names read."""

    def __init__(self):
        self.adapter_configs = {"unet": object()}

    def adapter_state_dicts(self, state_dict=None):
        return {"unet": {"given": state_dict}}


def test_earlier_adapter_names_give_the_same_and_say_they_are_old():
    host = Host()
    with pytest.warns(DeprecationWarning, match="adapter_configs"):
        assert host.lora_configs is host.adapter_configs
    with pytest.warns(DeprecationWarning, match="adapter_state_dicts"):
        assert host.lora_state_dicts({"w": 1}) == {"unet": {"given":
                                                            {"w": 1}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        host.adapter_state_dicts()  # the current name warns of nothing
