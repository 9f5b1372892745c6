"""One process per run folder: ``OUT/.lock``, held for the whole run.

The lock is an exclusive ``flock`` on ``OUT/.lock`` (the kernel releases it when the process dies,
so a killed run never leaves a lock that blocks its own ``--resume``); the file names its holder
(PID, host, start time) for the message a second process gets. Where ``flock`` is not supported
(some network file systems), a holder on this host whose PID no longer runs is taken as stale.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import platform
from pathlib import Path

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another process is running in this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(out): ...`` — refuses (RunLockedError naming the holder) while another
    process holds ``out``. Creates ``out`` if needed and removes it again on exit if it was
    created here and nothing else was written into it."""

    def __init__(self, directory: str | os.PathLike, purpose: str = "heartlora train"):
        self.directory, self.purpose = Path(directory), purpose
        self.path = self.directory / LOCK_NAME
        self.fd: int | None = None
        self.created_directory = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> RunLockedError:
        who = (f"{holder.get('purpose', 'another process')} (PID {holder.get('pid', '?')} on host "
               f"{holder.get('host', '?')}, since {holder.get('started', '?')})")
        return RunLockedError(f"{self.directory}: in use by {who}; wait for it to finish, or choose another --out "
                              f"(if that process is gone, delete {self.path})")

    def acquire(self) -> "RunLock":
        try:
            self.directory.mkdir(parents=True)
            self.created_directory = True
        except FileExistsError:  # there already, or made by a process racing this one
            pass
        for _ in range(5):  # the file may be replaced between open and flock by a finishing holder
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(self._holder()) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                holder = self._holder()  # no flock here: judge the holder by its PID
                if holder and holder.get("host") == platform.node() and _alive(int(holder.get("pid", -1))) \
                        and int(holder.get("pid", -1)) != os.getpid():
                    os.close(fd)
                    raise self._refuse(holder) from None
                if holder and holder.get("host") != platform.node():
                    os.close(fd)
                    raise self._refuse(holder) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            record = {"purpose": self.purpose, "pid": os.getpid(), "host": platform.node(),
                      "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
            self.fd = fd
            return self
        raise RunLockedError(f"{self.path}: could not take the lock (it kept changing); try again")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        if self.created_directory:
            try:
                self.directory.rmdir()  # only if empty: a run that wrote nothing leaves nothing
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
