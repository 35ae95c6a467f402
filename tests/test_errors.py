"""The suggestion that errors give for a mistyped name."""
from diffengine.errors import did_you_mean


def test_did_you_mean_finds_short_names():
    assert did_you_mean("rnak", ["r", "lora_alpha", "target_modules"]) == (
        " Did you mean 'r'?")
    assert did_you_mean("lora_alfa", ["r", "lora_alpha"]) == (
        " Did you mean 'lora_alpha'?")
    assert did_you_mean("zzz", ["r", "lora_alpha"]) == ""
