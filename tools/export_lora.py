"""Export a step's LoRA as one .safetensors file for A1111, ComfyUI or diffusers.

``mim run diffengine export_lora`` runs this; the logic is in
``diffengine/tools/export_lora.py``.
"""
from diffengine.cli import run
from diffengine.tools.export_lora import main

if __name__ == "__main__":
    run(main)
