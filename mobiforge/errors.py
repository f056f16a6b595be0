"""The one exception type that the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations

# Exit statuses, one rule for every command (docs/cli.md): 0 done; 1 the work ran and its result failed a check the
# user asked for (a budget, the accuracy gate, --min-top1, nothing shipped); 2 the command could not do its work as
# given: a bad flag, file or folder, including a read-only folder or a full disk; 130 interrupted.
EXIT_OK, EXIT_CHECK_FAILED, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


class MobiforgeError(Exception):
    """A user-facing error: the message names the file, flag or name at fault and what to do about it."""

    exit_code = EXIT_CANNOT_RUN


EXPORT_EXTRA = "pip install 'mobiforge[export]'"


def missing(package: str) -> MobiforgeError:
    """The error for an optional runtime package that is not installed, naming the extra that brings it."""
    return MobiforgeError(f"this needs {package}, which is not installed: {EXPORT_EXTRA}")


class UnknownModelError(MobiforgeError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
