"""Write the offline demo: the pretrained tiny base and a held-out concept.

``python tools/make_demo.py`` runs this (data/demo/tiny-sd and
data/demo/zorbs); the logic is in ``diffengine/tools/make_demo.py``.
"""
from diffengine.cli import run
from diffengine.tools.make_demo import main

if __name__ == "__main__":
    run(main)
