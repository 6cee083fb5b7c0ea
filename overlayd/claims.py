"""Mount points taken: by live overlays and by Creates under way.

Two Creates must never take one mount point, nor nest one overlay in another. A global
lock around all of Create did that, and serialized every Create on the machine; here each
claim is checked and taken under a short lock instead, at a cost that does not grow with
the number of overlays (a walk up the path, and a binary search for anything below it).
"""

from __future__ import annotations

import bisect
import threading
from pathlib import PurePosixPath

from overlayd.errors import InvalidSpec


class MountpointClaims:
    def __init__(self) -> None:
        self._owner: dict[str, str] = {}  # mount point -> overlay name
        self._sorted: list[str] = []  # the mount points, each with a trailing '/'
        self._lock = threading.Lock()

    def claim(self, name: str, path: str) -> None:
        """Take PATH for overlay NAME, or InvalidSpec if it is taken, inside a taken one,
        or above one."""
        path = path.rstrip("/") or "/"
        with self._lock:
            for parent in (path, *(str(p) for p in PurePosixPath(path).parents)):
                other = self._owner.get(parent)
                if other is not None:
                    raise InvalidSpec(f"The mount point '{path}' is inside overlay '{other}' "
                                      f"(mounted at '{parent}'); overlays cannot be nested.",
                                      "mountpoint")
            prefix = path if path.endswith("/") else path + "/"
            i = bisect.bisect_left(self._sorted, prefix)
            if i < len(self._sorted) and self._sorted[i].startswith(prefix):
                below = self._sorted[i].rstrip("/")
                raise InvalidSpec(f"The mount point '{path}' would hide overlay "
                                  f"'{self._owner[below]}' mounted below it at '{below}'.",
                                  "mountpoint")
            self._owner[path] = name
            bisect.insort(self._sorted, prefix)

    def release(self, name: str, path: str) -> None:
        path = path.rstrip("/") or "/"
        with self._lock:
            if self._owner.get(path) == name:
                del self._owner[path]
                prefix = path if path.endswith("/") else path + "/"
                i = bisect.bisect_left(self._sorted, prefix)
                if i < len(self._sorted) and self._sorted[i] == prefix:
                    del self._sorted[i]
