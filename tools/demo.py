"""The earlier name of ``tools/generate.py``: ``mim run diffengine demo``
generates images with a trained LoRA, as ``generate`` does.
"""
from diffengine.cli import run
from diffengine.tools.demo import main

if __name__ == "__main__":
    run(main)
