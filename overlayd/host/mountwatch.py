"""Changes of the mount table, as events the daemon's event loop can wait for.

The kernel marks /proc/self/mountinfo with POLLPRI (and POLLERR) whenever a mount is
added, removed or changed in our mount namespace (fs/proc_namespace.c, mounts_poll). An
epoll set that waits for exactly that is readable when the table changed, so the event
loop watches the epoll fd like any socket: no thread, no polling, no reading of the table.
"""

from __future__ import annotations

import contextlib
import os
import select


class MountWatch:
    def __init__(self, path: str = "/proc/self/mountinfo") -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._ep = select.epoll()
        # Level-triggered: each poll of mountinfo consumes the change it reports, so the
        # set is readable once per batch of changes.
        self._ep.register(self._fd, select.EPOLLPRI | select.EPOLLERR)

    def fileno(self) -> int:
        return self._ep.fileno()

    def drain(self) -> bool:
        """Consume what happened since the last call; True if the table changed. When
        the event loop waits on this epoll set, its wait consumes the change (mountinfo
        reports each to one poll): then its waking up is the event, and this says False."""
        return bool(self._ep.poll(0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._ep.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
