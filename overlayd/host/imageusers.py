"""Who else uses an image: for a commit that must not write under a reader, and a create
that must not read what someone writes. Read from the kernel, once per question:

- loop devices backed by the same inode (sysfs ``loop/backing_file``, then
  ``LOOP_GET_STATUS64``'s ``lo_device``/``lo_inode``, which a renamed or deleted path
  cannot fool), and where they are mounted;
- mounts of the image's block device (for an image that is one);
- processes with the image open for writing, or holding a lock on it (their fdinfo lists
  the locks of each open file: POSIX, flock and OFD, QEMU's included).

Its cost grows with the loop devices and the processes of the host, so only Commit (and a
Create whose mount failed, to say why) asks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat

from overlayd.host.loop import LOOP_GET_STATUS64, _LoopInfo64, backing_file
from overlayd.host.mounttable import read_mounts
from overlayd.mountinfo import MountInfo
from overlayd.partitions import overlaps


def _decode_dev(dev: int) -> tuple[int, int]:
    """The kernel's new_encode_dev, as LOOP_GET_STATUS64 reports lo_device."""
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def loop_backed_by(dev: int, ino: int, window: tuple[int, int] = (0, 0)) -> list[str]:
    """Every loop device whose backing file is inode (DEV, INO) and that shows a byte of
    WINDOW (offset, size; size 0 to the end): one of another partition does not."""
    want = (os.major(dev), os.minor(dev), ino)
    found: list[str] = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return found
    for name in names:
        if not name.startswith("loop") or backing_file(f"/dev/{name}") is None:
            continue
        try:
            fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = _LoopInfo64()
            raw = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(info))
            info = _LoopInfo64.from_buffer_copy(raw)
        except OSError:
            continue
        finally:
            os.close(fd)
        if (*_decode_dev(info.lo_device), info.lo_inode) == want and \
                overlaps((info.lo_offset, info.lo_sizelimit), window):
            found.append(f"/dev/{name}")
    return sorted(found, key=lambda d: int(d.removeprefix("/dev/loop")))


def _mounts_of(devices: set[str], rdev: tuple[int, int] | None,
               mounts: list[MountInfo]) -> dict[str, list[MountInfo]]:
    out: dict[str, list[MountInfo]] = {}
    for m in mounts:
        if m.source in devices:
            out.setdefault(m.source, []).append(m)
        elif rdev is not None and m.device == f"{rdev[0]}:{rdev[1]}":
            out.setdefault("", []).append(m)
    return out


def _processes(dev: int, ino: int, blk: int | None) -> list[str]:
    """'sleep (pid 12) has it open for writing', '... holds a lock on it'."""
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        writing = locking = False
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (dev, ino) and not (
                    blk is not None and stat.S_ISBLK(st.st_mode) and st.st_rdev == blk):
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = f.read()
            except OSError:
                continue
            for line in info.splitlines():
                if line.startswith("flags:"):
                    flags = int(line.split()[1], 8)
                    writing |= flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
                elif line.startswith("lock:"):
                    locking = True
        if writing or locking:
            comm = "?"
            with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            how = " and ".join(w for w, on in (("has it open for writing", writing),
                                                ("holds a lock on it", locking)) if on)
            found.append(f"process {comm} (pid {pid}) {how}")
    return found


def find_users(path: str, dev: int, ino: int, *, own_devices: set[str],
               own_mounts: set[str], writers_only: bool = False,
               window: tuple[int, int] = (0, 0)) -> list[str]:
    """Who else uses image PATH, inode (DEV, INO): sentences naming each user. OWN_DEVICES
    and OWN_MOUNTS (targets) are overlayd's own and left out. WRITERS_ONLY: only those
    who may change it (read-write mounts, writers, lock holders). WINDOW: the part of it
    asked about (a partition): loop devices of other parts are no users of it."""
    users: list[str] = []
    rdev: tuple[int, int] | None = None
    blk: int | None = None
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if stat.S_ISBLK(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
            blk = st.st_rdev
            rdev = (os.major(blk), os.minor(blk))
    every = loop_backed_by(dev, ino, window)
    loops = [d for d in every if d not in own_devices]
    mounts = [m for m in read_mounts() if m.target not in own_mounts]
    by_source = _mounts_of(set(every), rdev, mounts)
    # mount(8) -o loop,ro reuses a read-only loop device of the same file: ours too.
    for device in sorted(own_devices & set(every)):
        for m in by_source.get(device, []):
            writable = "rw" in m.super_options
            if not writers_only or writable:
                users.append(f"a mount of {device} at '{m.target}' "
                             f"({'read-write' if writable else 'read-only'})")
    for device in loops:
        where = by_source.get(device, [])
        rw = [m for m in where if "rw" in m.super_options]
        if writers_only and not rw:
            continue
        at = ", ".join(f"'{m.target}'" + (" read-write" if m in rw else " read-only")
                       for m in where)
        users.append(f"loop device {device}" + (f" (mounted at {at})" if at else ""))
    for m in by_source.get("", []):
        writable = "rw" in m.super_options
        if writers_only and not writable:
            continue
        users.append(f"a mount of {m.source} at '{m.target}' "
                     f"({'read-write' if writable else 'read-only'})")
    users += _processes(dev, ino, blk)
    return users
