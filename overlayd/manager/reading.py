"""Reading: what the bus and the CLI read of the overlays, changing nothing.

The records (``list``; ``get`` is the core's), the upper's usage (in a worker, or inline:
statvfs of a tmpfs does no I/O), the image's file system space (cached per file system),
the diff of the writes, and how many overlays share each image.
"""

from __future__ import annotations

import builtins

from overlayd.engine import diff as diff_proc
from overlayd.errors import OverlaydError
from overlayd.manager.core import ManagerCore
from overlayd.model import DiffEntry, LowerKind, Overlay, OverlayState, UpperUsage

# The states in which an overlay's image is mounted where _image_mount says.
SETTLED = (OverlayState.ACTIVE, OverlayState.UNMOUNTED)


class Reading(ManagerCore):
    def list(self) -> list[Overlay]:
        return [self._overlays[n] for n in sorted(self._overlays)]

    def upper_dir(self, name: str) -> str:
        return str(self._layout(name).upper)

    async def usage(self, name: str) -> UpperUsage:
        rec = self.get(name)
        return await self._blocking(self.host.upper.usage, str(self._layout(name).upper_mount),
                                    rec.upper)

    def image_space(self, name: str) -> tuple[int, int]:
        """The size and the free space (for root, who commits) of the file system that
        holds NAME's image, read at most once per usage_interval per file system; (0, 0)
        when it cannot be read: while a commit, a discard or a create has the image mount
        down, statvfs of its empty directory would read the runtime directory's file
        system (and cache it), not the image's."""
        rec = self.get(name)
        if rec.image_kind is not LowerKind.DIRECTORY and rec.state not in SETTLED:
            return 0, 0
        try:
            return self._spaces.get(self._image_mount(rec))
        except OverlaydError:
            return 0, 0

    def _image_mount(self, rec: Overlay) -> str:
        """Where REC's image is mounted (a directory lower: the directory itself)."""
        if self.is_root(rec.name) and self.root is not None:
            return str(self.root.state_dir / "lower")
        if rec.image_kind is LowerKind.DIRECTORY:
            return rec.image
        return str(self._layout(rec.name).lower_of(rec.lowers[0]))

    def fd_path(self, fd: int) -> str:
        """What an image fd refers to, for messages and polkit details."""
        return self.host.images.fd_path(fd)

    def usage_now(self, name: str) -> UpperUsage:
        """Usage of the upper, read inline: statvfs of a tmpfs does no I/O, so property
        reads may call it on the event loop. Zeros while the tmpfs is being replaced."""
        rec = self.get(name)
        target = str(self._layout(name).upper_mount)
        try:
            if rec.state not in (*SETTLED, OverlayState.COMMITTING) and \
                    not self._upper_mounted(rec, target):
                return UpperUsage(size=rec.size, used=0, inodes_used=0)
            return self.host.upper.usage(target, rec.upper)
        except OverlaydError:
            return UpperUsage(size=rec.size, used=0, inodes_used=0)

    def _upper_mounted(self, rec: Overlay, target: str) -> bool:
        """Whether REC's upper is mounted at TARGET: a failed overlay's may be gone (a
        discard stopped after unmounting it), and statvfs of the empty directory would
        read the file system below (the disk's gigabytes as the writes). Asked only off
        the settled states, so the property reads of live overlays cost nothing more."""
        top = self.host.mounts.at(target)
        return top is not None and self.host.upper.owns(rec.name, rec.upper)(top)

    async def diff(self, name: str, created_usec: int | None = None
                   ) -> builtins.list[DiffEntry]:
        async with self._lock(name):
            rec = self._current(name, created_usec)
            pairs = await self._blocking(diff_proc.run, self.host, rec, self._layout(name))
        return [DiffEntry(path=p, kind=k) for p, k in pairs]

    def image_users(self) -> dict[tuple[int, int], int]:
        """How many overlays use each image (for tests and status)."""
        return self._shared.counts()
