"""Fuse a LoRA into its base model and save a full model (a diffusers folder
or one single-file checkpoint).

``mim run diffengine merge_lora`` runs this; the logic is in
``diffengine/tools/merge_lora.py``.
"""
from diffengine.cli import run
from diffengine.tools.merge_lora import main

if __name__ == "__main__":
    run(main)
