"""What LyCORIS' kinds (LoHa, LoKr) share: their step file, their alpha
option and the option names other trainers give them."""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from diffengine.adapters.base import LYCORIS_WEIGHT_NAME, AdapterKind

# kohya's and LyCORIS' names for peft's options
LYCORIS_ALIASES = {"rank": "r", "network_dim": "r", "network_alpha": "alpha",
                   "target": "target_modules",
                   "use_tucker": "use_effective_conv2d"}


class LycorisKind(AdapterKind):
    """A kind that LyCORIS' loaders read: held in the LyCORIS file of a
    step folder, its alpha in peft's ``alpha``, and a LoRA config switched
    to it keeping its ``lora_alpha``."""

    alpha_option = "alpha"
    weight_name = LYCORIS_WEIGHT_NAME
    aliases: ClassVar[Mapping[str, str]] = LYCORIS_ALIASES
    synonyms: ClassVar[Mapping[str, str]] = {"lora_alpha": "alpha"}
