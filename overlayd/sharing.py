"""Which overlays use which image: the reference counts of shared lowers and image locks.

An image is known by its (dev, ino). Every overlay of a file or block device is a user of
its image; those whose lower is ``shared`` use one read-only mount of it
(``Layout.shared_lower``). The counts are not stored: they are derived from the records
(at start, from the records recovery adopts), so no second record can disagree with them.
Create, Commit and Discard of overlays of one image hold the image's lock (a thread lock:
they run in worker threads) while they change its lower, so they never interleave: two
commits of one image are serialized, and a create never reuses a lower a discard is
taking down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from overlayd.model import LowerKind, Overlay

Key = tuple[int, int]


def image_key(rec: Overlay) -> Key | None:
    """The image REC reads, or None for a directory lower (no image, no lock)."""
    lower = rec.lowers[0]
    return None if lower.kind is LowerKind.DIRECTORY else lower.key


class SharedLowers:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}
        self._users: dict[Key, dict[str, bool]] = {}  # name -> uses the shared lower

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
                self._users.setdefault(key, {})[rec.name] = rec.lowers[0].shared

    def remove(self, rec: Overlay) -> None:
        key = image_key(rec)
        if key is None:
            return
        with self._mutex:
            users = self._users.get(key, {})
            users.pop(rec.name, None)
            if not users:
                self._users.pop(key, None)  # its lock stays: a few bytes per image

    def users(self, key: Key | None, *, but: str = "") -> list[str]:
        """The overlays of image KEY (but BUT), sorted."""
        if key is None:
            return []
        with self._mutex:
            return sorted(n for n in self._users.get(key, {}) if n != but)

    def in_use(self, key: Key | None, *, but: str = "") -> bool:
        """Whether an overlay (not BUT) uses image KEY: O(1), for Create and Discard,
        whose cost must not grow with the number of overlays."""
        if key is None:
            return False
        with self._mutex:
            users = self._users.get(key, {})
            return len(users) - (but in users) > 0

    def counts(self) -> dict[Key, int]:
        with self._mutex:
            return {k: len(v) for k, v in self._users.items()}
