"""The merge mount: kernel overlayfs, with overlayd's pinned options.

A FUSE engine would be a second class with the same methods (``ports.MergeMount``).
"""

from __future__ import annotations

from overlayd import checks
from overlayd.host.errors import Op, map_os_errors
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
        with map_os_errors(f"mount the overlay at '{target}'", Op.MOUNT), \
                FsContext("overlay") as fc:
            fc.set_string("source", mount_source(name))
            for lower in lowers:  # the top layer first, as overlayfs stacks them
                fc.set_string("lowerdir+", lower)  # no escaping of ':' or ',' needed
            fc.set_string("upperdir", upper)
            fc.set_string("workdir", work)
            for key, value in PINNED:
                fc.set_string(key, value)
            fc.create()
            fc.mount_at(target, mount_attrs(options), target_fd)
