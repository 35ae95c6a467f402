"""Generate images with a trained LoRA: one PNG, a grid for several seeds.

``mim run diffengine demo`` runs this; the logic is in
``diffengine/tools/demo.py``.
"""
from diffengine.cli import run
from diffengine.tools.demo import main

if __name__ == "__main__":
    run(main)
