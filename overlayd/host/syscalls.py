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
SYS_fspick = 433
RESOLVE_NO_SYMLINKS = 0x04

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSCONFIG_CMD_RECONFIGURE = 7
FSPICK_CLOEXEC, FSPICK_SYMLINK_NOFOLLOW, FSPICK_NO_AUTOMOUNT = 0x1, 0x2, 0x4
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

    def __init__(self, fstype: str, *, picked: str | None = None) -> None:
        """A new superblock of FSTYPE; or, with PICKED, the context of the superblock
        mounted at that path, to reconfigure it (fspick(2), the new API's remount)."""
        self.fstype = fstype
        if picked is None:
            self.fd = _check(_libc.syscall(ctypes.c_long(SYS_fsopen), _fs(fstype),
                                           ctypes.c_uint(FSOPEN_CLOEXEC)), "fsopen", fstype)
        else:
            flags = FSPICK_CLOEXEC | FSPICK_SYMLINK_NOFOLLOW | FSPICK_NO_AUTOMOUNT
            self.fd = _check(_libc.syscall(ctypes.c_long(SYS_fspick), ctypes.c_int(AT_FDCWD),
                                           _fs(picked), ctypes.c_uint(flags)), "fspick", picked)

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

    def reconfigure(self) -> None:
        """Apply what was set to the picked superblock (a remount of it, everywhere)."""
        self._config(FSCONFIG_CMD_RECONFIGURE, None, None)

    def detached(self, attrs: int = 0) -> int:
        """fsmount() the configured superblock and attach it nowhere: an fd of a mount no
        namespace can see or copy, gone when the fd is closed."""
        mfd = _libc.syscall(ctypes.c_long(SYS_fsmount), ctypes.c_int(self.fd),
                            ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs))
        if mfd < 0:
            err = ctypes.get_errno()
            raise OSError(err, self.kernel_messages() or os.strerror(err))
        return int(mfd)

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


# -- statx(2), statmount(2), listmount(2): asking about one mount, not reading them all ------
# Numbers and layouts from include/uapi/linux/{stat,mount}.h (statmount/listmount: Linux 6.8;
# the fields used here: 6.11-6.15, see overlayd/host/mounttable.py). Both syscall numbers are
# the same on every architecture; statx goes through glibc (2.28+), whose number varies.

SYS_statmount, SYS_listmount = 457, 458

AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
STATX_MNT_ID = 0x1000
STATX_MNT_ID_UNIQUE = 0x4000
STATX_ATTR_MOUNT_ROOT = 0x2000

STATMOUNT_SB_BASIC = 0x1
STATMOUNT_MNT_BASIC = 0x2
STATMOUNT_PROPAGATE_FROM = 0x4
STATMOUNT_MNT_ROOT = 0x8
STATMOUNT_MNT_POINT = 0x10
STATMOUNT_FS_TYPE = 0x20
STATMOUNT_MNT_NS_ID = 0x40
STATMOUNT_MNT_OPTS = 0x80
STATMOUNT_FS_SUBTYPE = 0x100
STATMOUNT_SB_SOURCE = 0x200
STATMOUNT_OPT_ARRAY = 0x400
STATMOUNT_OPT_SEC_ARRAY = 0x800
STATMOUNT_SUPPORTED_MASK = 0x1000
LSMT_ROOT = 0xFFFFFFFFFFFFFFFF
MNT_ID_REQ_SIZE_VER0 = 24

# statmount.sb_flags (SB_* in the kernel) and the rest of statmount.mnt_attr.
SB_RDONLY, SB_SYNCHRONOUS, SB_MANDLOCK, SB_DIRSYNC, SB_LAZYTIME = 0x1, 0x10, 0x40, 0x80, 1 << 25
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_IDMAP = 0x100000
MOUNT_ATTR_NOSYMFOLLOW = 0x200000


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("_reserved", ctypes.c_int32)]


class Statx(ctypes.Structure):
    """struct statx, as far as overlayd reads it, padded to the kernel's 256 bytes."""
    _fields_ = [("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
                ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
                ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
                ("stx_mode", ctypes.c_uint16), ("_spare0", ctypes.c_uint16),
                ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
                ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
                ("stx_atime", _StatxTimestamp), ("stx_btime", _StatxTimestamp),
                ("stx_ctime", _StatxTimestamp), ("stx_mtime", _StatxTimestamp),
                ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
                ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
                ("stx_mnt_id", ctypes.c_uint64), ("_spare", ctypes.c_uint64 * 13)]


class MntIdReq(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("spare", ctypes.c_uint32),
                ("mnt_id", ctypes.c_uint64), ("param", ctypes.c_uint64)]


class StatmountHead(ctypes.Structure):
    """The fixed part of struct statmount (512 bytes); the [str] fields are offsets into
    the strings that follow it."""
    _fields_ = [("size", ctypes.c_uint32), ("mnt_opts", ctypes.c_uint32),
                ("mask", ctypes.c_uint64),
                ("sb_dev_major", ctypes.c_uint32), ("sb_dev_minor", ctypes.c_uint32),
                ("sb_magic", ctypes.c_uint64), ("sb_flags", ctypes.c_uint32),
                ("fs_type", ctypes.c_uint32), ("mnt_id", ctypes.c_uint64),
                ("mnt_parent_id", ctypes.c_uint64), ("mnt_id_old", ctypes.c_uint32),
                ("mnt_parent_id_old", ctypes.c_uint32), ("mnt_attr", ctypes.c_uint64),
                ("mnt_propagation", ctypes.c_uint64), ("mnt_peer_group", ctypes.c_uint64),
                ("mnt_master", ctypes.c_uint64), ("propagate_from", ctypes.c_uint64),
                ("mnt_root", ctypes.c_uint32), ("mnt_point", ctypes.c_uint32),
                ("mnt_ns_id", ctypes.c_uint64), ("fs_subtype", ctypes.c_uint32),
                ("sb_source", ctypes.c_uint32), ("opt_num", ctypes.c_uint32),
                ("opt_array", ctypes.c_uint32), ("opt_sec_num", ctypes.c_uint32),
                ("opt_sec_array", ctypes.c_uint32), ("supported_mask", ctypes.c_uint64),
                ("mnt_uidmap_num", ctypes.c_uint32), ("mnt_uidmap", ctypes.c_uint32),
                ("mnt_gidmap_num", ctypes.c_uint32), ("mnt_gidmap", ctypes.c_uint32),
                ("_spare2", ctypes.c_uint64 * 43)]


_STATMOUNT_HEAD = ctypes.sizeof(StatmountHead)
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.POINTER(Statx)]
    _statx.restype = ctypes.c_int


def statx(path: str, flags: int, mask: int, dir_fd: int = AT_FDCWD) -> Statx:
    """statx(2) of PATH; ENOSYS when glibc lacks the wrapper."""
    if _statx is None:
        raise OSError(38, os.strerror(38), path)  # ENOSYS
    buf = Statx()
    _check(_statx(dir_fd, _fs(path), flags, mask, ctypes.byref(buf)), "statx", path)
    return buf


def statmount(mnt_id: int, mask: int, bufsize: int = 4096) -> tuple[StatmountHead, bytes]:
    """statmount(2) of the mount with unique id MNT_ID: the fixed part and the raw strings
    (NUL-terminated, at the offsets the head gives). Grows its buffer on EOVERFLOW."""
    req = MntIdReq(MNT_ID_REQ_SIZE_VER0, 0, mnt_id, mask)
    while True:
        buf = ctypes.create_string_buffer(bufsize)
        ret = _libc.syscall(ctypes.c_long(SYS_statmount), ctypes.byref(req), buf,
                            ctypes.c_size_t(bufsize), ctypes.c_uint(0))
        if ret < 0:
            err = ctypes.get_errno()
            if err == 75 and bufsize < (1 << 24):  # EOVERFLOW: the strings did not fit
                bufsize *= 4
                continue
            raise OSError(err, os.strerror(err), f"statmount of mount {mnt_id}")
        head = StatmountHead.from_buffer_copy(buf)
        strings = head.size - _STATMOUNT_HEAD
        return head, ctypes.string_at(ctypes.addressof(buf) + _STATMOUNT_HEAD, strings) \
            if strings > 0 else b""


def listmount(mnt_id: int, batch: int = 512) -> list[int]:
    """listmount(2): the unique ids of the mounts below mount MNT_ID (LSMT_ROOT: our root),
    in increasing order."""
    ids: list[int] = []
    last = 0
    arr = (ctypes.c_uint64 * batch)()
    while True:
        req = MntIdReq(MNT_ID_REQ_SIZE_VER0, 0, mnt_id, last)
        n = _check(_libc.syscall(ctypes.c_long(SYS_listmount), ctypes.byref(req), arr,
                                 ctypes.c_size_t(batch), ctypes.c_uint(0)),
                   f"listmount of mount {mnt_id}")
        ids.extend(arr[:n])
        if n < batch:
            return ids
        last = ids[-1]
