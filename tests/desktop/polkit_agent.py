"""A real polkit authentication agent for a test: pkttyagent, registered for one process.

A desktop's graphical agent (polkit-gnome, gnome-shell) registers for a logind session, and
there is none here; ``pkttyagent --process PID`` is polkit's own agent registered for one
process instead, and it asks on a terminal: script(1) gives it one, whose output the test
reads and whose input it types into. The password is really checked, by polkit's setuid
helper through PAM (pam_unix): the agent runs in a mount namespace of its own where
/etc/shadow is a copy that gives the desktop user (nobody) a password, so the host's
/etc/shadow is never touched and nobody has no password anywhere else; and where the test's
bus is bound at /run/dbus/system_bus_socket, the only place the setuid helper looks.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from tests import helpers

PASSWORD = "correct horse"


def shadow_with_password(dest: Path, user: str, password: str) -> Path:
    """A copy of /etc/shadow where USER's password is PASSWORD (SHA-512 crypt)."""
    hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                            capture_output=True, text=True, check=True).stdout.strip()
    lines = []
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            fields[1] = hashed
        lines.append(":".join(fields))
    dest.write_text("\n".join(lines) + "\n")
    dest.chmod(0o600)
    return dest


class TtyAgent:
    """pkttyagent for process PID on BUS, in a pty; what it printed so far in self.out."""

    def __init__(self, workdir: Path, bus: str, pid: int, user: str = "nobody") -> None:
        shadow = shadow_with_password(workdir / "shadow", user, PASSWORD)
        self.pidfile = workdir / "agent.pid"
        self.pidfile.unlink(missing_ok=True)
        # fd 9 is the agent's --notify-fd, open on a file of its own: the agent closes it
        # once polkitd has registered it (and the number may be reused: the file tells)
        self.notify = workdir / "agent.notify"
        self.notify.touch()
        # polkit's setuid helper reports to polkitd on the default system bus address
        # whatever the environment says: the test's bus goes there, in the namespace too
        socket = bus.removeprefix("unix:path=")
        inner = (f"mount -n --bind {shadow} /etc/shadow && "
                 "mount -n -t tmpfs -o mode=0755 agent-bus /run/dbus && "
                 "touch /run/dbus/system_bus_socket && "
                 f"mount -n --bind {socket} /run/dbus/system_bus_socket && "
                 f"echo $$ > {self.pidfile} && "
                 f"exec pkttyagent --process {pid} --notify-fd 9 9>{self.notify}")
        self.proc = subprocess.Popen(
            ["script", "-qfec",
             f"unshare -m --propagation private sh -c '{inner}'", "/dev/null"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={"DBUS_SYSTEM_BUS_ADDRESS": bus, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG": "C.UTF-8", "TERM": "dumb"})
        self.out = ""
        helpers.wait_for(self.registered, 30, "pkttyagent to register with polkitd")

    def registered(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"pkttyagent exited: {self.read(0)}")
        if not self.pidfile.exists() or not self.pidfile.read_text().strip():
            return False
        agent = int(self.pidfile.read_text())
        try:
            comm = Path(f"/proc/{agent}/comm").read_text().strip()
        except FileNotFoundError:
            return False
        if comm != "pkttyagent":
            return False
        fds = Path(f"/proc/{agent}/fd")
        return all(os.readlink(fd) != str(self.notify) for fd in fds.iterdir())

    def read(self, timeout: float) -> str:
        """What the agent printed within TIMEOUT seconds (all of it so far)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self.out += chunk.decode(errors="replace").replace("\r", "")
        return self.out

    def wait_for(self, text: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while text not in self.out:
            if time.monotonic() > end:
                raise AssertionError(f"pkttyagent did not print {text!r}:\n{self.out}")
            self.read(0.2)
        return self.out

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.pidfile.exists() and self.pidfile.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(self.pidfile.read_text()), signal.SIGTERM)  # our agent
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
