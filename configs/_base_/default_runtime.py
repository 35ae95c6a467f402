default_scope = "diffengine"

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=4),
    dist_cfg=dict(backend="nccl"),
)

# LoRACheckpointHook writes work_dir/step{N}/pytorch_lora_weights.safetensors
# with every checkpoint; it is a default hook so `custom_hooks=[]` keeps it.
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
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
