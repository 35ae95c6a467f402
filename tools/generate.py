"""Generate images with a trained LoRA: one PNG, a grid for several seeds.

``mim run diffengine generate`` runs this; the logic is in
``diffengine/tools/generate.py``.
"""
from diffengine.cli import run
from diffengine.tools.generate import main

if __name__ == "__main__":
    run(main)
