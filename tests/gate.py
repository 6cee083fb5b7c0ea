"""OpenGate: hold a process at the moment it opens one file, until the test lets it go.

With fanotify's permission events (FAN_OPEN_PERM on one inode) the kernel stops whoever
opens the file until we answer. The tests use it to stop a commit at a known point in
the middle, deterministically and without touching the daemon: overlayd opens each file
of the upper to copy it into the image, so a gate on one file of the upper holds the
commit just before that file, with the files sorted before it already applied.

Closing the gate (or the test process dying) answers everything still held with
"allow": the kernel does that when the fanotify group goes away.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
from pathlib import Path
from types import TracebackType

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]

FAN_CLOEXEC = 0x1
FAN_CLASS_CONTENT = 0x4
FAN_MARK_ADD = 0x1
FAN_OPEN_PERM = 0x10000
FAN_ALLOW = 0x1
AT_FDCWD = -100
_EVENT = struct.Struct("=IBBHQii")  # fanotify_event_metadata
_RESPONSE = struct.Struct("=iI")  # fanotify_response


class OpenGate:
    def __init__(self, path: str | Path) -> None:
        fd = _libc.fanotify_init(FAN_CLOEXEC | FAN_CLASS_CONTENT, os.O_RDONLY | os.O_LARGEFILE)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self.fd = fd
        self.held: list[int] = []  # event fds waiting for our answer
        self.pids: list[int] = []
        if _libc.fanotify_mark(fd, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD,
                               os.fsencode(str(path))) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"fanotify_mark {path}: {os.strerror(err)}")

    def wait(self, timeout: float = 120.0) -> int:
        """Until someone opens the file; their pid. They stay stopped until release()."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            raise TimeoutError("nobody opened the gated file")
        data = os.read(self.fd, 4096)
        pid = 0
        for off in range(0, len(data), _EVENT.size):
            _len, _vers, _res, _mlen, _mask, efd, pid = _EVENT.unpack_from(data, off)
            self.held.append(efd)
            self.pids.append(pid)
        return pid

    def release(self) -> None:
        """Let everyone held go on."""
        for efd in self.held:
            os.write(self.fd, _RESPONSE.pack(efd, FAN_ALLOW))
            os.close(efd)
        self.held = []

    def close(self) -> None:
        if self.fd >= 0:
            self.release()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenGate:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
