"""The command-line tools that ``mim run diffengine NAME`` runs.

Each module has ``main(argv)``; ``tools/NAME.py`` only calls it.
"""
