"""Writing files without losing the previous copy: every file mobiforge writes for later use goes through
``write_atomic`` (a temp file in the same folder, fsync, then an atomic rename), so a kill, a crash or a full disk
leaves either the old file or the new one, never half of one.

A full disk (or a read-only or missing folder) is a one-line ``MobiforgeError`` naming the file and saying that
its previous copy was kept, never a traceback from deep inside a writer.

The file gets the mode a plain ``open()`` would give it (0644 under the usual umask 022), not the temp file's
private 0600: a report or a model card is meant to be read by a team share or a web server.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mobiforge.errors import MobiforgeError

BACKUP_SUFFIX = ".bak"  # the previous good copy kept beside a state file (``write_atomic(..., backup=True)``)


def write_atomic(
    path: str | os.PathLike[str], content: str | bytes | Callable[[IO[bytes]], None], backup: bool = False
) -> Path:
    """Replace ``path`` with ``content`` (text, bytes, or a function writing to a binary stream) atomically.
    ``backup`` first copies the current file to ``path + ".bak"``, so one damaged write can be recovered from."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        os.chmod(tmp_name, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as stream:
            if callable(content):
                content(stream)
            else:
                stream.write(content.encode() if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        if backup and path.is_file():
            shutil.copyfile(path, f"{path}{BACKUP_SUFFIX}")
        os.replace(tmp_name, path)  # atomic on POSIX and Windows
    except BaseException as error:
        # Writers that are not Python file code (torch.save's zip writer) report a full disk as a RuntimeError:
        # look at the disk itself before the temp file is removed and frees it.
        full = isinstance(error, Exception) and _nearly_full(path.parent)
        Path(tmp_name).unlink(missing_ok=True)
        if full:
            raise _write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        raise
    return path


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back: the only portable way to read it)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()  # another thread creating a file between the two calls would get the wrong mask


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _write_error(path: Path, error: OSError) -> MobiforgeError:
    kept = "the previous copy is kept" if path.exists() else "nothing was written"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return MobiforgeError(f"disk full while writing {path}; {kept}: free some space and run the command again")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return MobiforgeError(f"cannot write {path}: {error.strerror}; {kept}: choose a writable folder")
    return MobiforgeError(f"cannot write {path}: {error.strerror or error}; {kept}")
