"""Errors that name what the user must fix; every command prints them as
one line and exits with status 1 (see :mod:`diffengine.cli`)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffEngineError(Exception):
    """Base of the errors a user can act on.

    Attributes:
        status (int): The exit status of a command this error ends.
    """

    status: int = 1

    def line(self) -> str:
        """The one line a command prints for this error.

        The last line of the message, where a DataLoader worker wrapped the
        error in its traceback, without the error's qualified name that the
        wrapping puts before it.
        """
        message = str(self).strip().splitlines()[-1] if str(self) else ""
        qualified = f"{type(self).__module__}.{type(self).__name__}: "
        return f"diffengine: error: {message.removeprefix(qualified)}"


class ConfigError(DiffEngineError, ValueError):
    """A config value, path or option that cannot work."""


class DataError(DiffEngineError, ValueError):
    """Training data that cannot be read or used."""


class MissingFileError(DiffEngineError, FileNotFoundError):
    """A file or folder that is not there, or lacks what it should hold."""


class NonFiniteLossError(DiffEngineError, RuntimeError):
    """The loss became NaN or infinite; no weights were updated with it."""


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`` Did you mean 'X'?`` for the choice closest to a mistyped ``name``,
    or an empty string when none is close.

    difflib's ratio alone misses short names (``rnak`` for ``r``: 0.4), so a
    choice that ``name`` starts with, or that starts with ``name``, counts
    as close too.

    Args:
        name (object): What the user wrote.
        choices (Iterable[str]): The valid names.
    """
    name, choices = str(name), sorted(set(choices))
    hint = difflib.get_close_matches(name, choices, n=1)
    if not hint:
        lowered = name.lower()
        # the longest shared start wins: "rnak" → "r", "lora_alfa" stays
        # with difflib's "lora_alpha"
        prefixes = [c for c in choices if c and (
            lowered.startswith(c.lower()) or c.lower().startswith(lowered))]
        hint = sorted(prefixes, key=len, reverse=True)[:1]
    return f" Did you mean {hint[0]!r}?" if hint else ""
