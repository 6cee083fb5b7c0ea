"""Upper backends: the file system that takes an overlay's writes.

Only a tmpfs today. Another backend (zram, say) is a class with the same methods
(``ports.UpperBackend``), chosen by the record's ``upper.kind``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from overlayd.errors import OverlaydError
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.mounts import top_owned
from overlayd.host.ports import Owned
from overlayd.host.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    FsContext,
    umount2,
)
from overlayd.layout import mount_source
from overlayd.model import UpperKind, UpperUsage


class TmpfsUpper:
    kind = UpperKind.TMPFS

    def owns(self, name: str) -> Owned:
        """Our tmpfs carries our source string."""
        src = mount_source(name)
        return lambda m: m.source == src and m.fstype == "tmpfs"

    def make(self, name: str, target: str, size: int) -> None:
        with map_os_errors(f"mount a tmpfs of {size} bytes at '{target}'", Op.MOUNT), \
                FsContext("tmpfs") as fc:
            fc.set_string("source", mount_source(name))
            fc.set_string("size", str(size))
            fc.set_string("mode", "0700")
            fc.create()
            fc.mount_at(target, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID)

    def detach_for_later(self, name: str, target: str) -> Callable[[], None]:
        """Detach the tmpfs at TARGET now, but free it later: an O_PATH fd keeps its
        superblock alive until the returned function closes it. Unmounting a tmpfs frees
        its pages synchronously (70 ms for 512 MiB), which a commit's caller need not wait
        for."""
        if not top_owned(target, self.owns(name)):
            return lambda: None
        with map_os_errors(f"detach '{target}'", Op.MOUNT):
            fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
            try:
                umount2(target, MNT_DETACH)
            except BaseException:
                os.close(fd)
                raise

        def free() -> None:  # after the reply, in the background: nobody to tell
            with contextlib.suppress(OSError):
                os.close(fd)
        return free

    def usage(self, target: str) -> UpperUsage:
        try:
            v = os.statvfs(target)
        except OSError as e:
            raise OverlaydError(f"Cannot read the usage of '{target}': {e.strerror}.") from None
        return UpperUsage(size=v.f_blocks * v.f_frsize, used=(v.f_blocks - v.f_bfree) * v.f_frsize,
                          inodes_used=v.f_files - v.f_ffree)
