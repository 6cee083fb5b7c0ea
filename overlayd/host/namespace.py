"""A private mount namespace without overlayd's mounts, for a helper that must not pin them.

``--standalone`` runs polkitd in a mount namespace of its own (so that its policy
directories can be replaced without touching the host). A new namespace starts as a copy of
ours, and every copied mount keeps its file system busy: polkitd would hold old uppers,
images and loop devices for its whole life, and Discard could not release them. So the
helper, once in its namespace, detaches there (only there) the mounts overlayd made:

* every tmpfs and overlay whose source starts with ``overlayd-`` (any overlayd's: the
  contract in DESIGN.md reserves the prefix);
* the image mounts, ``<runtime_dir>/<name>/lower`` and the shared ones
  ``<runtime_dir>/.lowers/<dev>-<ino>``, and the zram uppers (ext4 from ``/dev/zramN`` at
  ``<runtime_dir>/<name>/rw``), for the daemon's runtime directory and for every overlay
  whose tmpfs is ``<dir>/<name>/rw`` with source ``overlayd-<name>``, or whose overlay
  (source ``overlayd-<name>``) has its upperdir at ``<dir>/<name>/rw/upper`` (another
  overlayd with another runtime directory). A zram upper kept here would keep its
  device busy after the overlay's Discard, for polkitd's whole life.

Nothing else: not another /dev/loop mount of the host, not a foreign mount that hides one
of ours (then ours stays), and never the root file system on an overlay (the initramfs' mounts
at /, its layers and its read-only lower, sources ``overlayd-root`` too): a lazy detach of /
takes every mount below it, polkitd's binds and /proc included, and those mounts are never
unmounted while the system runs, so there is nothing to free.

Each detach is one umount2(MNT_DETACH) syscall: no umount(8) processes, no argument list
that grows with the number of overlays (E2BIG at about 1,000), no re-reading of the mount
table per mount (util-linux does, which made it quadratic).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from overlayd.host.mounttable import read_mounts
from overlayd.host.rootfs import LAYERS_DIR, STATE_DIR
from overlayd.host.syscalls import MNT_DETACH, umount2
from overlayd.layout import SHARED_LOWERS, SOURCE_PREFIX, Layout
from overlayd.mountinfo import MountInfo

DEFAULT_RUNTIME_DIR = Path("/run/overlayd")
OWN_FSTYPES = ("tmpfs", "overlay")
# the root file system on an overlay: the initramfs', kept for the whole boot
ROOT_OVERLAY_MOUNTS = frozenset(("/", str(LAYERS_DIR), str(STATE_DIR / "lower")))

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]


def mount_table() -> list[MountInfo]:
    """This process's mount table. The one place this module reads it, so it is easy to
    point elsewhere (statmount/listmount) later."""
    return read_mounts()


def _check(ret: int, what: str, path: str | None = None) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path or what)


def enter_private_mount_namespace() -> None:
    """unshare(CLONE_NEWNS), then make every mount private: without the second step an
    unmount in here would propagate to the host's shared mounts. Raises before anything is
    unmounted if either fails."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount", "/")


def bind(source: str | Path, target: str | Path) -> None:
    """mount --bind SOURCE TARGET (not recursive), as a syscall."""
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None),
           "mount", f"{source} -> {target}")


def overlayd_mounts(mounts: Sequence[MountInfo], runtime_dirs: Iterable[Path]
                    ) -> list[MountInfo]:
    """The mounts of MOUNTS that an overlayd made, the latest first (children before the
    mounts they sit on). Pure: it decides from the table alone."""
    mounts = [m for m in mounts if m.target not in ROOT_OVERLAY_MOUNTS]
    ours = [m for m in mounts
            if m.source.startswith(SOURCE_PREFIX) and m.fstype in OWN_FSTYPES]
    dirs = {str(d) for d in runtime_dirs}
    for m in ours:  # another overlayd's tmpfs at <dir>/<name>/rw names its runtime dir
        base = Layout(Path(m.target).parent)
        if m.fstype == "tmpfs" and m.target == str(base.upper_mount) \
                and m.source == SOURCE_PREFIX + base.base.name:
            dirs.add(str(base.base.parent))
        upperdir = m.super_option("upperdir") if m.fstype == "overlay" else None
        if upperdir:  # and its overlay's upperdir <dir>/<name>/rw/upper (a zram upper)
            up = Layout(Path(upperdir).parent.parent)
            if upperdir == str(up.upper) and m.source == SOURCE_PREFIX + up.base.name:
                dirs.add(str(up.base.parent))
    picked = {id(m) for m in ours}
    for m in mounts:
        base = Layout(Path(m.target).parent)
        if m.target == str(base.lower) and str(base.base.parent) in dirs:
            picked.add(id(m))
        elif m.target == str(base.upper_mount) and str(base.base.parent) in dirs \
                and m.fstype == "ext4" and m.source.startswith("/dev/zram"):
            picked.add(id(m))  # a zram upper
        elif base.base.name == SHARED_LOWERS and str(base.base.parent) in dirs \
                and m.source.startswith("/dev/"):
            picked.add(id(m))  # <dir>/.lowers/<dev>-<ino>: an image shared by overlays
    return [m for m in reversed(mounts) if id(m) in picked]


def _mount_id_at(path: str) -> int | None:
    """The id of the mount on top at PATH (what umount2(PATH) would detach), or None."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    return None


def detach_overlayd_mounts(runtime_dirs: Iterable[Path]) -> tuple[int, list[str]]:
    """Lazily detach, in this (private!) namespace, every mount overlayd_mounts() picks.
    Returns how many were detached and the problems met (a mount left in place)."""
    detached, problems = 0, []
    for m in overlayd_mounts(mount_table(), runtime_dirs):
        if _mount_id_at(m.target) != m.mount_id:
            # Gone with a parent detached before it, or under a mount that is not ours:
            # umount2 would detach that one instead.
            continue
        try:
            umount2(m.target, MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                problems.append(f"Cannot detach {m.target}: {e.strerror}")
            continue
        detached += 1
    return detached, problems
