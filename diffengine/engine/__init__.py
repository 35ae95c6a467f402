from diffengine.engine.amp import fall_back_from_amp_without_cuda
from diffengine.engine.hooks import LoRACheckpointHook, VisualizationHook
from diffengine.engine.log_processor import SpeedLogProcessor

__all__ = [
    "LoRACheckpointHook",
    "SpeedLogProcessor",
    "VisualizationHook",
    "fall_back_from_amp_without_cuda",
]
