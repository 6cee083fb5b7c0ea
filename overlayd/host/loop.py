"""Loop devices through /dev/loop-control and LOOP_CONFIGURE: one ioctl, no losetup."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time
from dataclasses import dataclass

LOOP_CONFIGURE = 0x4C0A
LOOP_GET_STATUS64 = 0x4C05
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_char * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


@dataclass
class LoopDevice:
    """An attached loop device and our fd on it. Closing the fd lets autoclear detach it
    once nothing else (a mount) holds it."""

    path: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach(backing_fd: int, *, read_only: bool, name: str = "", offset: int = 0,
           sizelimit: int = 0) -> LoopDevice:
    """Bind BACKING_FD to a free loop device with autoclear; returns it opened. OFFSET and
    SIZELIMIT (0: to the end) give it one partition of the file: the kernel refuses any
    I/O outside it, a write through it included."""
    cfg = _LoopConfig()
    cfg.fd = backing_fd
    cfg.info.lo_offset = offset
    cfg.info.lo_sizelimit = sizelimit
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    cfg.info.lo_file_name = os.fsencode(name)[: LO_NAME_SIZE - 1]
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _attempt in range(64):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            path = f"/dev/loop{n}"
            fd = _open_node(path, n)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, bytes(cfg))
            except OSError as e:
                os.close(fd)
                if e.errno == errno.EBUSY:  # another process took it between the two calls
                    continue
                raise
            return LoopDevice(path, fd)
        raise OSError(errno.EBUSY, "no free loop device after 64 attempts", "/dev/loop-control")
    finally:
        os.close(ctl)


def _open_node(path: str, n: int) -> int:
    # devtmpfs creates the node when loop-control adds a device; give it a moment.
    for _ in range(50):
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            time.sleep(0.002)
    raise OSError(errno.ENOENT, f"loop device node {path} did not appear", path)


def backing_file(device: str) -> str | None:
    """The backing file of an attached loop device, or None when it is free."""
    name = os.path.basename(device)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def window(device: str) -> tuple[int, int] | None:
    """(lo_offset, lo_sizelimit) of an attached loop device (sysfs), or None when it is
    free or not a loop device."""
    name = os.path.basename(device)
    try:
        with open(f"/sys/block/{name}/loop/offset") as f:
            offset = int(f.read())
        with open(f"/sys/block/{name}/loop/sizelimit") as f:
            return offset, int(f.read())
    except (OSError, ValueError):
        return None


def attached() -> dict[str, str]:
    """Every attached loop device and its backing file (from sysfs)."""
    out: dict[str, str] = {}
    for name in os.listdir("/sys/block"):
        if name.startswith("loop"):
            backing = backing_file(f"/dev/{name}")
            if backing is not None:
                out[f"/dev/{name}"] = backing
    return out
