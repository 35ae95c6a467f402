"""Errors that name what the user must fix; ``tools/train.py`` prints them
as one line and exits with status 1."""


class DiffEngineError(Exception):
    """Base of the errors a user can act on."""


class ConfigError(DiffEngineError, ValueError):
    """A config value, path or option that cannot work."""


class DataError(DiffEngineError, ValueError):
    """Training data that cannot be read or used."""


class NonFiniteLossError(DiffEngineError, RuntimeError):
    """The loss became NaN or infinite; no weights were updated with it."""
