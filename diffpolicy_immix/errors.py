"""The toolkit's own input errors: what a user can fix by changing a command, a config value or a file.

The command-line tools print these as one line (``error: <message>``) and exit with status 2; any other
exception is a defect and keeps its full traceback. Messages name the file, key, field or value at fault.
"""

from __future__ import annotations

__all__ = ["MissingExtraError", "MissingInputError", "UserError"]


class UserError(ValueError):
    """Bad input: a configuration value, a missing or malformed file, an unusable option.

    A ``ValueError``, so callers that already catch ``ValueError`` keep working.
    """


class MissingInputError(UserError, FileNotFoundError):
    """An input file or folder that does not exist (also a ``FileNotFoundError``)."""


class MissingExtraError(UserError, ImportError):
    """A task needs an optional dependency that is not installed; the message names the extra."""
