"""--standalone: a private system-like bus for machines without one (containers, CI).

It starts its own ``dbus-daemon`` with a deny-by-default system policy plus the project's
bus policy (``dbus/org.overlayd.Overlayd1.conf``), listening on a socket in a directory
under /run that every local user may reach, as on the real system bus: authorization is
the daemon's job, not the socket's. Stopping it ends that dbus-daemon (ours, by PID) and
removes the directory.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

from overlayd.errors import OverlaydError
from overlayd.host.process import spawn_tied

log = logging.getLogger("overlayd.standalone")

POLICY_NAME = "org.overlayd.Overlayd1.conf"
POLICY_PLACES = (
    Path("/usr/share/dbus-1/system.d"),
    Path("/etc/dbus-1/system.d"),
    Path(__file__).resolve().parent.parent / "dbus",  # a source checkout
)
POLKIT_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include ignore_missing="yes">{polkit}</include>
  <include>{policy}</include>
</busconfig>
"""


def find_policy() -> Path:
    for place in POLICY_PLACES:
        if (place / POLICY_NAME).is_file():
            return place / POLICY_NAME
    raise OverlaydError(f"Cannot find the bus policy {POLICY_NAME} in "
                        + ", ".join(str(p) for p in POLICY_PLACES) + ".")


class StandaloneBus:
    def __init__(self, directory: Path, proc: asyncio.subprocess.Process, address: str) -> None:
        self.directory = directory
        self.proc = proc
        self.address = address
        self._stderr: asyncio.Future[None] | None = None

    @classmethod
    async def start(cls) -> StandaloneBus:
        if shutil.which("dbus-daemon") is None:
            raise OverlaydError("--standalone needs dbus-daemon (Debian package dbus-daemon).")
        directory = Path(tempfile.mkdtemp(prefix="overlayd-bus-", dir="/run"))
        directory.chmod(0o755)  # every local user may connect, as to the system bus
        try:
            socket = directory / "system_bus_socket"
            config = directory / "bus.conf"
            config.write_text(BUS_CONFIG.format(socket=socket, policy=find_policy(),
                                                polkit=POLKIT_POLICY))
            proc = await spawn_tied("dbus-daemon", f"--config-file={config}", "--nofork",
                                    "--nopidfile", "--print-address=1")
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
            if not line:
                await proc.wait()
                raise OverlaydError(f"dbus-daemon exited with status {proc.returncode}.")
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        bus = cls(directory, proc, f"unix:path={socket}")
        bus._stderr = asyncio.ensure_future(bus._forward_stderr())
        return bus

    async def _forward_stderr(self) -> None:
        """dbus-daemon's own complaints (say, an fd limit it may not raise) go to our log."""
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            log.debug("dbus-daemon: %s", line.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._stderr is not None:
            self._stderr.cancel()
        shutil.rmtree(self.directory, ignore_errors=True)
