"""Mounting, unmounting (only what is ours) and the mount table, through syscalls."""

from __future__ import annotations

import errno
import os

from overlayd import mountinfo
from overlayd.errors import InvalidSpec, MountFailed, OverlayBusy, describe_holders
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.holders import find_holders
from overlayd.host.mounttable import (
    backend,
    mount_at,
    mounts_below,
    mounts_containing,
    read_mounts,
)
from overlayd.host.mountwatch import MountWatch
from overlayd.host.ports import Owned
from overlayd.host.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_RDONLY,
    RESOLVE_NO_SYMLINKS,
    FsContext,
    openat2,
    syncfs,
    umount2,
)


def top_owned(target: str, owned: Owned) -> bool:
    """True if the top mount at TARGET is ours, False if nothing is mounted there;
    refuses (MountFailed) when someone else's mount is on top."""
    top = mount_at(target)
    if top is None:
        return False
    if not owned(top):
        raise MountFailed(f"Refusing to unmount '{target}': what is mounted there "
                          f"({top.source}, {top.fstype}) was not mounted by overlayd.")
    return True


class LinuxMounts:
    def mount_fs(self, source: str, target: str, fstype: str, *, read_only: bool) -> None:
        mode = "read-only" if read_only else "read-write"
        with map_os_errors(f"mount {source} ({fstype}) {mode} at '{target}'", Op.MOUNT), \
                FsContext(fstype) as fc:
            fc.set_string("source", source)
            if read_only:
                fc.set_flag("ro")
            fc.create()
            fc.mount_at(target, MOUNT_ATTR_RDONLY if read_only else 0)

    def open_detached(self, source: str, fstype: str) -> int:
        with map_os_errors(f"mount {source} ({fstype}) read-write", Op.MOUNT), \
                FsContext(fstype) as fc:
            fc.set_string("source", source)
            fc.create()
            return fc.detached()

    def close_detached(self, fd: int) -> None:
        """Closing the last reference unmounts it, synchronously (before close returns):
        the image is written and released when this returns."""
        with map_os_errors("unmount the image", Op.MOUNT):
            os.close(fd)

    def table(self) -> list[mountinfo.MountInfo]:
        return read_mounts()

    def at(self, path: str) -> mountinfo.MountInfo | None:
        return mount_at(path)

    def at_each(self, paths: list[str]) -> dict[str, mountinfo.MountInfo | None]:
        if backend() == "statmount":
            return {p: mount_at(p) for p in paths}
        tops = {m.target: m for m in read_mounts()}  # later mounts cover earlier ones
        return {p: tops.get(p) for p in paths}

    def watch(self) -> MountWatch:
        return MountWatch()

    def containing(self, path: str) -> list[mountinfo.MountInfo]:
        return mounts_containing(path)

    def unmount(self, target: str, owned: Owned, *, lazy: bool = False) -> bool:
        """Unmount the top mount at TARGET if OWNED says it is ours; False if none is there."""
        if not top_owned(target, owned):
            return False
        try:
            umount2(target, MNT_DETACH if lazy else 0)
        except OSError as e:
            if e.errno == errno.EBUSY:
                holders = self.holders(target)
                raise OverlayBusy(f"'{target}' is busy: in use by {describe_holders(holders)}.",
                                  holders) from None
            if e.errno == errno.EINVAL:  # not a mount point (any more)
                return False
            raise MountFailed(f"Cannot unmount '{target}': {e.strerror}.", e.errno) from None
        return True

    def holders(self, target: str) -> list[tuple[int, str]]:
        ids = {m.mount_id for m in mounts_below(target)}
        return find_holders(target, ids)

    def open_mountpoint(self, path: str, *, follow_symlinks: bool) -> tuple[int, str]:
        """An O_PATH fd of the mount point directory and the path it really has. The checks
        and the mount then act on this very directory, whatever happens to the path; without
        FOLLOW_SYMLINKS no component of PATH may be a symbolic link."""
        resolve = 0 if follow_symlinks else RESOLVE_NO_SYMLINKS
        try:
            fd = openat2(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, resolve)
        except OSError as e:
            reason = {errno.ENOENT: "does not exist; create the directory first",
                      errno.ENOTDIR: "is not a directory",
                      errno.ELOOP: "goes through a symbolic link; name the real directory",
                      }.get(e.errno or 0, f"cannot be opened: {e.strerror}")
            raise InvalidSpec(f"The mount point '{path}' {reason}.", "mountpoint") from None
        return fd, os.readlink(f"/proc/self/fd/{fd}")

    def syncfs(self, path: str) -> None:
        with map_os_errors(f"flush '{path}' to disk", Op.MOUNT):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                syncfs(fd)
            finally:
                os.close(fd)
