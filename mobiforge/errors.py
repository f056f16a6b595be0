"""The one exception type that the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations


class MobiforgeError(Exception):
    """A user-facing error: the message names the file, flag or name at fault and what to do about it."""

    exit_code = 2


EXPORT_EXTRA = "pip install 'mobiforge[export]'"


def missing(package: str) -> MobiforgeError:
    """The error for an optional runtime package that is not installed, naming the extra that brings it."""
    return MobiforgeError(f"this needs {package}, which is not installed: {EXPORT_EXTRA}")


class UnknownModelError(MobiforgeError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
