"""Writing files so that a crash, a full disk or a planted symlink can never leave a half-written
or misplaced file: the one helper every writer of the package goes through.

``atomic_write(path, data)`` writes into a fresh temporary file *in the target's folder*
(``tempfile.mkstemp``: ``O_CREAT | O_EXCL`` with an unpredictable name, so no existing file or
symlink is ever followed), flushes and fsyncs it, then renames it over ``path`` (a rename
replaces a symlink at ``path`` instead of writing through it). On any failure the temporary is
removed, the previous ``path`` is left as it was, and an :class:`OutputError` names the file.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["OutputError", "atomic_write", "describe_os_error", "umask"]

Writer = Union[bytes, Callable[[BinaryIO], None]]


class OutputError(OSError):
    """A file heartlora had to write could not be written (disk full, permissions, …).

    The message names the file and the reason; whatever was there before is intact."""


def describe_os_error(err: BaseException) -> str:
    """``No space left on device (ENOSPC)`` rather than ``[Errno 28] …`` or a torch wrapper text."""
    code = getattr(err, "errno", None)
    if code is None and isinstance(err.__cause__, OSError):
        code = err.__cause__.errno
    if code is None and "unexpected pos" in str(err):  # torch.save's message when the disk fills mid-file
        code = errno.ENOSPC
    if code is not None:
        return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    return f"{type(err).__name__}: {err}"


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: Writer) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file object) to ``path`` atomically."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{path}: cannot create a file in {path.parent} ({describe_os_error(err)})") from None
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; a finished file gets the usual mode
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, (bytes, bytearray, memoryview)):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(err, (OSError, RuntimeError)):  # torch.save reports a full disk as RuntimeError
            raise OutputError(f"{path}: cannot write ({describe_os_error(err)}); the previous version, "
                              "if any, is unchanged") from None
        raise
    return path


def read_json_object(path: str | os.PathLike, expected: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in ``path``; ``error`` naming the file (and line) and ``expected`` otherwise.
    The one reader of the package's own JSON files (adapter config, backbone record, run record)."""
    import json

    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); expected {expected}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file; expected {expected}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object ({expected}), got {type(value).__name__}")
    return value
