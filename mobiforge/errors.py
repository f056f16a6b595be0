"""The one exception type that the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations


class MobiforgeError(Exception):
    """A user-facing error: the message names the file, flag or name at fault and what to do about it."""

    exit_code = 2


class UnknownModelError(MobiforgeError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
