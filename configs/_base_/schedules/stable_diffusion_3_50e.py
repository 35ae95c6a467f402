# 50 epochs at lr 1e-4 (stable_diffusion_50e.py) in bfloat16 autocast, as
# SD3 is trained: float16 overflows in its activations.
_base_ = "./stable_diffusion_50e.py"

optim_wrapper = dict(dtype="bfloat16")
