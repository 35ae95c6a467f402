default_scope = "diffengine"
# DiffEngineRunner: gloo on CPUs, LoRA-only checkpoints with step{N}/
# folders, resume that survives kills, SIGINT/SIGTERM save (see its doc).
runner_type = "DiffEngineRunner"

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=4),
    # No backend: NCCL with CUDA, gloo without; set one here to force it.
    dist_cfg=dict(timeout=1800),
)

# LoRACheckpointHook writes work_dir/step{N}/pytorch_lora_weights.safetensors
# with every checkpoint; it is a default hook so `custom_hooks=[]` keeps it.
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    # Validation rows of scalars.json at the iteration, beside the loss.
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(
        type="LoRACheckpointHook", interval=1, by_epoch=True,
        max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)

vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="Visualizer", vis_backends=vis_backends)
# SpeedLogProcessor: mmengine's log line (eta, time, CUDA memory) plus it/s and
# the peak host memory (peak_ram, MB).
log_processor = dict(type="SpeedLogProcessor", by_epoch=True)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
