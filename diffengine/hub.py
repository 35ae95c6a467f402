"""A hub id that can be neither downloaded nor found in the cache, as one
error that says so and names the local alternative."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from diffengine.errors import ConfigError


def _unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says that the hub
    could not be reached and the cache did not hold the file."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        # LocalEntryNotFoundError: huggingface_hub without network or with
        # HF_HUB_OFFLINE=1; ConnectionError: datasets' "Couldn't reach"
        if isinstance(err, (LocalEntryNotFoundError, ConnectionError)):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def hub_download(name: str, local: str) -> Iterator[None]:
    """Turn the errors of downloading the hub id ``name`` without network
    (or with ``HF_HUB_OFFLINE=1``) and without a cached copy into one
    :class:`ConfigError`; other errors pass unchanged.

    Args:
        name (str): The hub id.
        local (str): How to give a local copy instead, e.g. ``"--cfg-options
            model.model=/path/to/a/diffusers/folder"``.
    """
    try:
        yield
    except Exception as err:
        if not _unreachable(err):
            raise
        raise ConfigError(
            f"{name!r} is a hub id that cannot be downloaded (no network, or "
            "HF_HUB_OFFLINE=1) and is not in the Hugging Face cache; connect "
            f"once to cache it, or use a local copy: {local}") from err
