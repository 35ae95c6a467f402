"""Save what a config's training pipeline feeds the model, as images + captions.

``mim run diffengine browse_dataset`` runs this; the logic is in
``diffengine/tools/browse_dataset.py``.
"""
from diffengine.cli import run
from diffengine.tools.browse_dataset import main

if __name__ == "__main__":
    run(main)
