from diffengine.engine.amp import fall_back_from_amp_without_cuda
from diffengine.engine.hooks import (
    LoRACheckpointHook,
    LoRAEMAHook,
    VisualizationHook,
)
from diffengine.engine.log_processor import SpeedLogProcessor
from diffengine.engine.loops import ResumableEpochTrainLoop, ResumableIterTrainLoop
from diffengine.engine.optim_wrapper_constructor import LoRAOptimWrapperConstructor
from diffengine.engine.runner import DiffEngineRunner, TrainingInterruptedError
from diffengine.engine.sharding import FullyShardWrapper
from diffengine.engine.validation_loop import DenoisingLossMetric, ValidationLossLoop

__all__ = [
    "DenoisingLossMetric",
    "DiffEngineRunner",
    "FullyShardWrapper",
    "LoRACheckpointHook",
    "LoRAEMAHook",
    "LoRAOptimWrapperConstructor",
    "ResumableEpochTrainLoop",
    "ResumableIterTrainLoop",
    "SpeedLogProcessor",
    "TrainingInterruptedError",
    "ValidationLossLoop",
    "VisualizationHook",
    "fall_back_from_amp_without_cuda",
]
