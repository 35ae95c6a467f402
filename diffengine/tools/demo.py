"""The earlier name of :mod:`diffengine.tools.generate`, for
``mim run diffengine demo`` and ``python tools/demo.py``."""
from diffengine.tools.generate import main, parse_args

__all__ = ["main", "parse_args"]
