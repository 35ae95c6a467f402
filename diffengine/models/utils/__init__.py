from diffengine.models.utils.lora import (
    add_lora_adapter,
    build_lora_config,
    check_target_modules,
    count_trainable_parameters,
)

__all__ = [
    "add_lora_adapter",
    "build_lora_config",
    "check_target_modules",
    "count_trainable_parameters",
]
