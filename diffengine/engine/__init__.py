from diffengine.engine.amp import fall_back_from_amp_without_cuda
from diffengine.engine.hooks import LoRACheckpointHook, VisualizationHook

__all__ = [
    "LoRACheckpointHook",
    "VisualizationHook",
    "fall_back_from_amp_without_cuda",
]
