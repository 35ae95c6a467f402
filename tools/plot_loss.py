"""Plot the training loss of a work dir from mmengine's JSON scalar log.

``mim run diffengine plot_loss`` runs this; the logic is in
``diffengine/tools/plot_loss.py``.
"""
from diffengine.cli import run
from diffengine.tools.plot_loss import main

if __name__ == "__main__":
    run(main)
