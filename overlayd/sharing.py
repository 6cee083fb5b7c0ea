"""Which overlays use which image: the reference counts of shared lowers and image locks.

An image is known by its (dev, ino). Every overlay of a file or block device is a user of
its image; those whose lower is ``shared`` use one read-only mount of it
(``Layout.shared_lower``). The counts are not stored: they are derived from the records
(at start, from the records recovery adopts), so no second record can disagree with them.
Create, Commit and Discard of overlays of one image hold the image's lock (a thread lock:
they run in worker threads) while they change its lower, so they never interleave: two
commits of one image are serialized, and a create never reuses a lower a discard is
taking down.

Partitions (issue 15): overlays of one partition of an image share a mount of that
partition; overlays of different partitions of one image file have a mount each, but one
image lock and one QEMU lock (the file's). A commit is refused only while an overlay of a
part of the file it writes (the same partition, or the whole image) reads it: writing
partition 2 while an overlay reads partition 1 changes no byte that one reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from overlayd.model import LowerKind, Overlay
from overlayd.partitions import overlaps

Key = tuple[int, int]
Window = tuple[int, int]  # (offset, size) in bytes; size 0: to the end of the image


def image_key(rec: Overlay) -> Key | None:
    """The image REC reads, or None for a directory lower (no image, no lock)."""
    lower = rec.lowers[0]
    return None if lower.kind is LowerKind.DIRECTORY else lower.key


class SharedLowers:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}
        self._users: dict[Key, dict[str, Window]] = {}  # name -> the bytes it reads

    @contextmanager
    def locked(self, key: Key | None) -> Iterator[None]:
        """Hold image KEY's lock (nothing for None)."""
        if key is None:
            yield
            return
        with self._mutex:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def add(self, rec: Overlay) -> None:
        key = image_key(rec)
        if key is not None:
            with self._mutex:
                self._users.setdefault(key, {})[rec.name] = rec.lowers[0].window

    def remove(self, rec: Overlay) -> None:
        key = image_key(rec)
        if key is None:
            return
        with self._mutex:
            users = self._users.get(key, {})
            users.pop(rec.name, None)
            if not users:
                self._users.pop(key, None)  # its lock stays: a few bytes per image

    def users(self, key: Key | None, *, but: str = "", window: Window | None = None
              ) -> list[str]:
        """The overlays of image KEY (but BUT), sorted; with WINDOW only those that read
        bytes of it."""
        if key is None:
            return []
        with self._mutex:
            return sorted(n for n, w in self._users.get(key, {}).items()
                          if n != but and (window is None or overlaps(w, window)))

    def in_use(self, key: Key | None, *, but: str = "", window: Window | None = None
               ) -> bool:
        """Whether an overlay (not BUT) uses image KEY (with WINDOW: exactly that part of
        it, so that it shares the mount of it): O(1) for an image without partitions,
        for Create and Discard, whose cost must not grow with the number of overlays."""
        if key is None:
            return False
        with self._mutex:
            users = self._users.get(key, {})
            if window is None:
                return len(users) - (but in users) > 0
            return any(w == window for n, w in users.items() if n != but)

    def counts(self) -> dict[Key, int]:
        with self._mutex:
            return {k: len(v) for k, v in self._users.items()}
