"""Thin ctypes wrappers for the syscalls Python's os module lacks.

mount(2)/umount2(2) and the new mount API (fsopen, fsconfig, fsmount, move_mount).
Each raises OSError with the errno; ``FsContext`` also collects the kernel's own
error text from the fs context, which is far more useful than the errno alone.
"""

from __future__ import annotations

import ctypes
import os
from types import TracebackType

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

# Syscall numbers of the new mount API are the same on every architecture but alpha.
SYS_move_mount, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_openat2 = 429, 430, 431, 432, 437
RESOLVE_NO_SYMLINKS = 0x04

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
AT_FDCWD = -100

MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80

MS_RDONLY = 0x1
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8


def _fs(p: str | os.PathLike[str]) -> bytes:
    return os.fsencode(p)


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path or what)
    return ret


_libc.syncfs.argtypes = [ctypes.c_int]


def syncfs(fd: int) -> None:
    _check(_libc.syncfs(fd), "syncfs")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    return _check(_libc.syscall(ctypes.c_long(SYS_openat2), ctypes.c_int(AT_FDCWD), _fs(path),
                                ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
                  "openat2", path)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_fs(target), flags | UMOUNT_NOFOLLOW), "umount2", target)


class FsContext:
    """fsopen() .. fsmount() .. move_mount(), keeping the kernel's messages for errors."""

    def __init__(self, fstype: str) -> None:
        self.fstype = fstype
        self.fd = _check(_libc.syscall(ctypes.c_long(SYS_fsopen), _fs(fstype),
                                       ctypes.c_uint(FSOPEN_CLOEXEC)), "fsopen", fstype)

    def __enter__(self) -> FsContext:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        os.close(self.fd)

    def kernel_messages(self) -> str:
        """Drain the fs context's log: 'e overlay: failed to ...' lines, prefix dropped."""
        lines = []
        while True:
            try:
                raw = os.read(self.fd, 1024)
            except OSError:
                break
            if not raw:
                break
            lines.append(raw.decode(errors="replace").split(" ", 1)[-1].strip())
        return "; ".join(lines)

    def _config(self, cmd: int, key: bytes | None, value: bytes | None) -> None:
        ret = _libc.syscall(ctypes.c_long(SYS_fsconfig), ctypes.c_int(self.fd), ctypes.c_uint(cmd),
                            key, value, ctypes.c_int(0))
        if ret < 0:
            err = ctypes.get_errno()
            detail = self.kernel_messages()
            raise OSError(err, detail or os.strerror(err), self.fstype)

    def set_string(self, key: str, value: str) -> None:
        self._config(FSCONFIG_SET_STRING, key.encode(), _fs(value))

    def set_flag(self, key: str) -> None:
        self._config(FSCONFIG_SET_FLAG, key.encode(), None)

    def create(self) -> None:
        self._config(FSCONFIG_CMD_CREATE, None, None)

    def mount_at(self, target: str, attrs: int = 0, target_fd: int | None = None) -> None:
        """fsmount() the configured superblock, then attach it at TARGET, or on the
        directory TARGET_FD refers to (then TARGET only names it in errors)."""
        mfd = _libc.syscall(ctypes.c_long(SYS_fsmount), ctypes.c_int(self.fd),
                            ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs))
        if mfd < 0:
            err = ctypes.get_errno()
            raise OSError(err, self.kernel_messages() or os.strerror(err), target)
        try:
            if target_fd is None:
                to_fd, to_path, flags = AT_FDCWD, _fs(target), MOVE_MOUNT_F_EMPTY_PATH
            else:
                to_fd, to_path = target_fd, b""
                flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
            _check(_libc.syscall(ctypes.c_long(SYS_move_mount), ctypes.c_int(mfd), b"",
                                 ctypes.c_int(to_fd), to_path, ctypes.c_uint(flags)),
                   "move_mount", target)
        finally:
            os.close(mfd)
