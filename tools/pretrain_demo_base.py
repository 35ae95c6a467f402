"""Rebuild the demo's pretrained tiny base from scratch on a CPU.

``python tools/pretrain_demo_base.py`` runs this; the logic is in
``diffengine/tools/pretrain_demo_base.py``.
"""
from diffengine.cli import run
from diffengine.tools.pretrain_demo_base import main

if __name__ == "__main__":
    run(main)
