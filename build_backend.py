"""setuptools' PEP 517 backend without the PEP 660 editable hook.

``pip install -e .`` then falls back to ``setup.py develop``, whose MIM
extension links ``configs/`` and ``tools/`` into ``diffengine/.mim`` and
whose egg-link makes ``mim`` look for them in the source tree. A PEP 660
editable wheel would leave ``mim`` looking in site-packages, where they are
not. Regular builds (``pip install .``) are setuptools' own.
"""
from setuptools.build_meta import *  # noqa: F403
from setuptools.build_meta import __all__ as _setuptools_all

__all__ = [
    name for name in _setuptools_all
    if name not in ("build_editable", "get_requires_for_build_editable",
                    "prepare_metadata_for_build_editable")
]
del build_editable  # noqa: F821
del get_requires_for_build_editable  # noqa: F821
del prepare_metadata_for_build_editable  # noqa: F821
