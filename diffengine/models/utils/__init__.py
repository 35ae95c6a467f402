from diffengine.models.utils.lora import build_lora_config, check_target_modules

__all__ = ["build_lora_config", "check_target_modules"]
