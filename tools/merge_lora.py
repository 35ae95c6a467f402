"""Fuse a LoRA into its base model and save a full diffusers model folder.

``mim run diffengine merge_lora`` runs this; the logic is in
``diffengine/tools/merge_lora.py``.
"""
from diffengine.tools.merge_lora import main

if __name__ == "__main__":
    main()
