"""The directory of a ``--standalone`` bus, /run/overlayd-bus-XXXXXXXX, and its reclaiming.

A daemon killed with SIGKILL cannot remove its directory. So each daemon holds an flock on
``lock`` inside its directory for as long as it lives (the kernel drops the lock when the
process dies, however it dies), and every start removes the directories whose lock it can
take: their owner is gone. A directory whose lock is held is never touched, nor one without
a lock file (made by an older overlayd, which may still run).

The lock file is created and locked under another name, then renamed to ``lock``: a lock
file that another start can see is always locked already.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("overlayd.standalone")

PARENT = Path("/run")
PREFIX = "overlayd-bus-"
LOCK = "lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding the flock of PATH, or None if it is missing or held by a live owner."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep_stale(parent: Path = PARENT) -> list[Path]:
    """Remove the bus directories under PARENT whose owner is gone; returns them."""
    removed = []
    for d in parent.glob(PREFIX + "*"):
        if d.is_symlink() or not d.is_dir():
            continue
        fd = _try_lock(d / LOCK)
        if fd is None:
            continue
        try:  # still holding the lock: no other start takes it meanwhile
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)
        if not d.exists():
            removed.append(d)
            log.info("Removed %s, left by a daemon that was killed.", d)
    return removed


class BusDirectory:
    """A fresh bus directory under PARENT, locked for the life of this object."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, parent: Path = PARENT) -> BusDirectory:
        sweep_stale(parent)
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        fd = -1
        try:
            path.chmod(0o755)  # every local user may connect, as to the system bus
            staging = path / f".{LOCK}.new"
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(staging, path / LOCK)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            if fd >= 0:
                os.close(fd)
            raise
        return cls(path, fd)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1
