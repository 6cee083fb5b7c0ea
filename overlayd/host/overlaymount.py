"""The merge mount: kernel overlayfs, with overlayd's pinned options; ``Merges`` picks it
or the FUSE engine (``host/fusemount.py``) by the record's engine.
"""

from __future__ import annotations

import errno

from overlayd import checks
from overlayd.errors import MountFailed
from overlayd.host.errors import Op, map_os_errors
from overlayd.host.fusemount import FuseOverlay, owns_fuse
from overlayd.host.mounttable import mount_at
from overlayd.host.ports import Owned
from overlayd.host.syscalls import MOUNT_ATTR_NOATIME as _NOATIME
from overlayd.host.syscalls import (
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NODIRATIME,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MOUNT_ATTR_STRICTATIME,
    FsContext,
)
from overlayd.layout import mount_source
from overlayd.model import MergeEngine
from overlayd.overlayfs import PINNED

_ATTRS = {
    "ro": MOUNT_ATTR_RDONLY, "nosuid": MOUNT_ATTR_NOSUID, "nodev": MOUNT_ATTR_NODEV,
    "noexec": MOUNT_ATTR_NOEXEC, "noatime": _NOATIME, "strictatime": MOUNT_ATTR_STRICTATIME,
    "nodiratime": MOUNT_ATTR_NODIRATIME, "relatime": 0, "rw": 0,
}


def mount_attrs(options: tuple[str, ...]) -> int:
    flags = 0
    for o in options:
        flags |= _ATTRS[o]
    return flags


class KernelOverlay:
    def owns(self, name: str) -> Owned:
        """Our overlay carries our source string."""
        src = mount_source(name)
        return lambda m: m.source == src

    def verify(self, name: str, target: str) -> None:
        """Read the new overlay back: ours, and every pinned option in force."""
        top = mount_at(target)
        checks.check_overlay_options([top] if top else [], target, mount_source(name))

    def mount(self, name: str, target: str, *, lowers: list[str], upper: str, work: str,
              options: tuple[str, ...], target_fd: int | None = None) -> None:
        with map_os_errors(f"mount the overlay at '{target}'", Op.MOUNT):
            try:
                fc = FsContext("overlay")
            except OSError as e:
                if e.errno == errno.ENODEV:
                    raise no_overlayfs() from None
                raise
        with map_os_errors(f"mount the overlay at '{target}'", Op.MOUNT), fc:
            fc.set_string("source", mount_source(name))
            for lower in lowers:  # the top layer first, as overlayfs stacks them
                fc.set_string("lowerdir+", lower)  # no escaping of ':' or ',' needed
            fc.set_string("upperdir", upper)
            fc.set_string("workdir", work)
            for key, value in PINNED:
                fc.set_string(key, value)
            fc.create()
            fc.mount_at(target, mount_attrs(options), target_fd)


def no_overlayfs() -> MountFailed:
    """The kernel has no overlayfs (fsopen: ENODEV, the module could not be loaded)."""
    return MountFailed("This kernel has no overlayfs (the module 'overlay' is not built or "
                       "cannot be loaded). engine = \"fuse\" would work: it merges the layers "
                       "with fuse-overlayfs instead.", errno.ENODEV)


class Merges:
    """The MergeMount port: the kernel's overlayfs or fuse-overlayfs, by the record's
    engine. A mount is told apart by its type (overlay, fuse.overlayd-NAME)."""

    def __init__(self, fuse: FuseOverlay | None = None) -> None:
        self.kernel = KernelOverlay()
        self.fuse = fuse or FuseOverlay()

    def owns(self, name: str) -> Owned:
        kernel = self.kernel.owns(name)
        return lambda m: owns_fuse(name, m) or (m.fstype == "overlay" and kernel(m))

    def verify(self, name: str, target: str, engine: MergeEngine = MergeEngine.KERNEL) -> None:
        (self.fuse if engine is MergeEngine.FUSE else self.kernel).verify(name, target)

    def mount(self, name: str, target: str, *, lowers: list[str], upper: str, work: str,
              options: tuple[str, ...], target_fd: int | None = None,
              engine: MergeEngine = MergeEngine.KERNEL) -> None:
        impl = self.fuse if engine is MergeEngine.FUSE else self.kernel
        impl.mount(name, target, lowers=lowers, upper=upper, work=work, options=options,
                   target_fd=target_fd)

    def watch_server(self, name: str, upper: str) -> int | None:
        return self.fuse.watch_server(name, upper)

    def reap_dead(self, name: str, target: str, upper: str) -> str | None:
        return self.fuse.reap_dead(name, target, upper)

    def settle(self, name: str, upper: str) -> None:
        self.fuse.settle(name, upper)
