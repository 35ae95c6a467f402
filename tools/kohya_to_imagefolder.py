"""Write metadata.jsonl for a kohya-style folder (image + same-named .txt).

``mim run diffengine kohya_to_imagefolder`` runs this; the logic is in
``diffengine/tools/kohya_to_imagefolder.py``.
"""
from diffengine.cli import run
from diffengine.tools.kohya_to_imagefolder import main

if __name__ == "__main__":
    run(main)
