"""Errors that carry a message meant for the user.

Everything that is the user's fault (a wrong path, an unknown corpus, a bad config value)
is raised as a :class:`PalimpsestError` subclass with a one-line message; the CLI prints
that line and exits non-zero. Anything else is a bug and keeps its traceback.
"""


class PalimpsestError(Exception):
    """Base class of the errors caused by user input."""


class ConfigError(PalimpsestError):
    """A configuration file or value is wrong (unknown key, wrong type, bad value)."""


class DataError(PalimpsestError):
    """A corpus, file or dataset cannot be used (missing, empty, unknown name)."""


class ModelError(PalimpsestError):
    """A model cannot be built, loaded or understood (unknown type, missing modules)."""


class StorageError(PalimpsestError):
    """Outputs cannot be written (a full disk, a read-only folder); earlier outputs are kept."""
