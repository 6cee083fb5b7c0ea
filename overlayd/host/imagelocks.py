"""Image locks as QEMU takes them, so that QEMU, other overlayd instances and overlayd
itself see each other: OFD locks (``F_OFD_SETLK``) on single bytes of the image file.

QEMU (block/file-posix.c, ``raw_apply_lock_bytes`` and ``raw_check_lock_bytes``) gives
each block permission bit ``i`` two bytes: ``RAW_LOCK_PERM_BASE + i`` (100 + i), locked
shared by whoever *has* the permission, and ``RAW_LOCK_SHARED_BASE + i`` (200 + i), locked
shared by whoever *does not share* it with others. Every lock is a read lock; a conflict
is found by testing a byte for a write lock (``F_OFD_GETLK``): someone else has it.
Permission bits: 0 consistent read, 1 write, 2 write unchanged, 3 resize.

- An overlay *reads* the image and lets nobody change it: bytes 100 (read), 201 and 203
  (write and resize not shared). Refused when someone holds 101 or 103 (writes it) or
  200 (does not share reading).
- A commit *writes* it and shares nothing: 101 and 103 besides, and 200 and 202. Refused
  when anyone else holds 100-103 (reads or writes it) or 201 (does not share writing).

The daemon keeps one open file description per image (its own, not the loop device's:
a lock must go with the daemon, and a kill -9 drops it) for as long as an overlay uses it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading

from overlayd.errors import ImageInUse, OverlaydError

F_OFD_GETLK, F_OFD_SETLK = 36, 37
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
PERM_BASE, SHARED_BASE = 100, 200  # QEMU's RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE
READ, WRITE, WRITE_UNCHANGED, RESIZE = 0, 1, 2, 3
_NAMES = {READ: "read", WRITE: "write", WRITE_UNCHANGED: "write", RESIZE: "resize"}

# What an overlay holds, and what it must find free; then the same for a commit.
READER_HOLDS = (PERM_BASE + READ, SHARED_BASE + WRITE, SHARED_BASE + RESIZE)
READER_TESTS = (PERM_BASE + WRITE, PERM_BASE + RESIZE, SHARED_BASE + READ)
WRITER_ADDS = (PERM_BASE + WRITE, PERM_BASE + RESIZE, SHARED_BASE + READ,
               SHARED_BASE + WRITE_UNCHANGED)
WRITER_TESTS = (PERM_BASE + READ, PERM_BASE + WRITE, PERM_BASE + WRITE_UNCHANGED,
                PERM_BASE + RESIZE, SHARED_BASE + WRITE, SHARED_BASE + READ)
_FLOCK = "hhqqi4x"  # struct flock on Linux (64-bit off_t)


def _lock(fd: int, cmd: int, kind: int, byte: int) -> int:
    """fcntl on one byte; for F_OFD_GETLK the type found (F_UNLCK: free)."""
    raw = fcntl.fcntl(fd, cmd, struct.pack(_FLOCK, kind, os.SEEK_SET, byte, 1, 0))
    return int(struct.unpack(_FLOCK, raw)[0])


def conflicts(fd: int, tests: tuple[int, ...]) -> list[int]:
    """The bytes of TESTS some other open file description holds a lock on."""
    return [b for b in tests if _lock(fd, F_OFD_GETLK, F_WRLCK, b) != F_UNLCK]


def describe(byte: int) -> str:
    base, i = (PERM_BASE, byte - PERM_BASE) if byte < SHARED_BASE else \
        (SHARED_BASE, byte - SHARED_BASE)
    what = _NAMES.get(i, f"permission {i}")
    return (f"a process holds the '{what}' lock (byte {byte}, as QEMU takes it)"
            if base == PERM_BASE else
            f"a process does not share '{what}' (lock byte {byte}, as QEMU takes it)")


# Per process, as the locks themselves are: a second LinuxHost in the same process (a
# test's restarted manager) finds the locks held, not in its way.
_FDS: dict[tuple[int, int], int] = {}
_MUTEX = threading.Lock()


class LinuxImageLocks:
    def __init__(self) -> None:
        self._fds = _FDS
        self._mutex = _MUTEX

    def hold(self, path: str, dev: int, ino: int, fd: int | None = None) -> None:
        """Take the reader's locks on image (DEV, INO) unless held already. FD: an open fd
        of it (reopened, so the lock has its own file description), else PATH is opened
        (and must still be that inode). ImageInUse when someone writes it."""
        with self._mutex:
            if (dev, ino) in self._fds:
                return
            try:
                own = os.open(f"/proc/self/fd/{fd}" if fd is not None and fd >= 0 else path,
                              os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as e:
                raise OverlaydError(f"Cannot open the image '{path}' to lock it: "
                                    f"{e.strerror}.") from None
            try:
                st = os.fstat(own)
                if (st.st_dev, st.st_ino) != (dev, ino):
                    raise OverlaydError(f"The image '{path}' was replaced by another file.")
                found = conflicts(own, READER_TESTS)
                if found:
                    raise ImageInUse(f"The image '{path}' is being written: "
                                     f"{'; '.join(describe(b) for b in found)}.",
                                     [describe(b) for b in found])
                for b in READER_HOLDS:
                    _lock(own, F_OFD_SETLK, F_RDLCK, b)
            except OSError as e:
                os.close(own)
                if e.errno in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
                    return  # a file system without locks: nothing to share them with
                raise OverlaydError(f"Cannot lock the image '{path}': {e.strerror}.") \
                    from None
            except BaseException:
                os.close(own)
                raise
            self._fds[(dev, ino)] = own

    def release(self, dev: int, ino: int) -> None:
        with self._mutex:
            fd = self._fds.pop((dev, ino), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def lock_write(self, path: str, dev: int, ino: int) -> None:
        """Add the writer's locks; ImageInUse naming the locks of others if any."""
        with self._mutex:
            fd = self._fds.get((dev, ino))
        if fd is None:
            return  # not lockable (no locks on that file system)
        try:
            found = conflicts(fd, WRITER_TESTS)
            if found:
                users = [describe(b) for b in found]
                raise ImageInUse(f"The image '{path}' is in use: {'; '.join(users)}.", users)
            for b in WRITER_ADDS:
                _lock(fd, F_OFD_SETLK, F_RDLCK, b)
        except OSError as e:
            raise OverlaydError(f"Cannot lock the image '{path}' for writing: "
                                f"{e.strerror}.") from None

    def unlock_write(self, dev: int, ino: int) -> None:
        with self._mutex:
            fd = self._fds.get((dev, ino))
        if fd is None:
            return
        for b in WRITER_ADDS:
            with contextlib.suppress(OSError):
                _lock(fd, F_OFD_SETLK, F_UNLCK, b)

    def held(self) -> set[tuple[int, int]]:
        with self._mutex:
            return set(self._fds)
