"""The one exception type users see: its message is a full sentence naming what, where and what is allowed.

The CLI prints it without a traceback (unless --debug) and exits with code 2.
"""


class KorllamaError(Exception):
    """An error in the user's input or configuration (not a bug in korllama)."""


class DataError(KorllamaError):
    """A table that cannot be read or does not match its spec."""


class ConfigError(KorllamaError):
    """A config or spec file with an unknown key or a bad value."""
