"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.

READY=1 once the bus name is owned (and after each reload, which starts with RELOADING=1),
STATUS= lines for ``systemctl status``, WATCHDOG=1
pings from the event loop (a stuck loop stops pinging and systemd restarts us), and
STOPPING=1. Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written '@name'; the kernel wants a leading NUL.
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self.watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False  # systemd gone or the socket closed: nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self, status: str) -> None:
        """RELOADING=1 with MONOTONIC_USEC (what Type=notify-reload wants, and fine for
        Type=notify); READY=1 again when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    async def watchdog(self) -> None:
        """Ping at half the interval systemd asked for, until cancelled."""
        if not self.watchdog_usec:
            return
        interval = self.watchdog_usec / 2_000_000
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
