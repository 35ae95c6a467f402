from diffengine.engine.hooks.lora_checkpoint_hook import LoRACheckpointHook
from diffengine.engine.hooks.lora_ema_hook import LoRAEMAHook
from diffengine.engine.hooks.visualization_hook import VisualizationHook

__all__ = ["LoRACheckpointHook", "LoRAEMAHook", "VisualizationHook"]
