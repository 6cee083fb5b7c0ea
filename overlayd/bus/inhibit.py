"""logind's inhibitor locks: a poweroff waits instead of cutting a commit in half.

While a job runs, the daemon holds ``Inhibit("shutdown:sleep", "overlayd", WHY, "block")``
of ``org.freedesktop.login1.Manager``: the lock is the fd in the reply, held until it is
closed. Where logind is not running (``--standalone``'s private bus, a system without
systemd) there is no lock, quietly: the call does not start logind (NO_AUTOSTART), and
the job never waits for it (``take`` runs beside the job, and a lock that arrives after
the job ended is closed at once).
"""

from __future__ import annotations

import contextlib
import logging
import os

from dbus_next import Message, MessageFlag, MessageType

from overlayd.bus.connection import OverlaydBus

log = logging.getLogger("overlayd.bus")

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_IFACE = "org.freedesktop.login1.Manager"
WHAT = "shutdown:sleep"
WHO = "overlayd"
MODE = "block"
# What the bus answers when logind is not there.
ABSENT = {"org.freedesktop.DBus.Error.ServiceUnknown",
          "org.freedesktop.DBus.Error.NameHasNoOwner"}


class InhibitorLock:
    """One lock; ``release`` (idempotent) closes its fd, which ends it."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class Inhibitor:
    def __init__(self, bus: OverlaydBus) -> None:
        self.bus = bus
        self._warned = False

    async def take(self, why: str) -> InhibitorLock:
        """A lock with WHY shown to whoever tries to power off; an empty one when logind
        is not there or refuses (logged once)."""
        try:
            reply = await self.bus.call(Message(
                destination=LOGIND, path=LOGIND_PATH, interface=LOGIND_IFACE, member="Inhibit",
                signature="ssss", body=[WHAT, WHO, why, MODE], flags=MessageFlag.NO_AUTOSTART))
        except Exception as e:  # the bus connection is gone (the daemon stops with it)
            log.debug("No inhibitor lock: %s", e)
            return InhibitorLock(None)
        fds, reply.unix_fds = list(reply.unix_fds), []
        keep: int | None = None
        if reply.message_type is MessageType.METHOD_RETURN and reply.signature == "h" \
                and fds and 0 <= reply.body[0] < len(fds):
            keep = fds[reply.body[0]]
        for fd in fds:
            if fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if keep is None:
            if reply.message_type is MessageType.ERROR and reply.error_name in ABSENT:
                log.debug("No logind on this bus: no inhibitor lock.")
            elif not self._warned:
                self._warned = True
                log.warning("Cannot take an inhibitor lock from logind (%s); a poweroff will "
                            "not wait for running commits.",
                            reply.error_name or "no lock in the reply")
        return InhibitorLock(keep)
