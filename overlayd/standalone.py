"""--standalone: a private system-like bus for machines without one (containers, CI).

It starts its own ``dbus-daemon`` with a deny-by-default system policy plus the project's
bus policy (``dbus/org.overlayd.Overlayd1.conf``), listening on a socket in a directory
under /run that every local user may reach, as on the real system bus: authorization is
the daemon's job, not the socket's. When polkitd is installed it starts one on that bus,
in a mount namespace of its own where the actions directory is a private copy that also
holds overlayd's policy (and the rules directory may be replaced), so no host file is
touched. Stopping ends both (ours, by PID) and removes the directory.

Even a SIGKILL leaves nothing running: dbus-daemon gets the kernel's death signal, and
polkitd runs under a guard that stops it (overlayd.host.guard). The directory it leaves
is removed by the next start (overlayd.host.busdir). This module only orchestrates: the
processes, namespaces and mounts are the host layer's.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from overlayd.errors import OverlaydError
from overlayd.host.busdir import BusDirectory
from overlayd.host.guard import KILL_AFTER
from overlayd.host.namespace import DEFAULT_RUNTIME_DIR
from overlayd.host.process import spawn_guarded, spawn_tied

log = logging.getLogger("overlayd.standalone")

POLICY_NAME = "org.overlayd.Overlayd1.conf"
POLICY_PLACES = (
    Path("/usr/share/dbus-1/system.d"),
    Path("/etc/dbus-1/system.d"),
    Path(__file__).resolve().parent.parent / "dbus",  # a source checkout
)
POLKIT_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
POLKITD = Path("/usr/lib/polkit-1/polkitd")
ACTIONS_DIR = Path("/usr/share/polkit-1/actions")
RULES_DIR = Path("/etc/polkit-1/rules.d")
ACTIONS_NAME = "org.overlayd.overlayd1.policy"
ACTIONS_PLACES = (ACTIONS_DIR, Path(__file__).resolve().parent.parent / "polkit")

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


def find_actions() -> Path:
    for place in ACTIONS_PLACES:
        if (place / ACTIONS_NAME).is_file():
            return place / ACTIONS_NAME
    raise OverlaydError(f"Cannot find the polkit policy {ACTIONS_NAME}.")


def find_policy() -> Path:
    for place in POLICY_PLACES:
        if (place / POLICY_NAME).is_file():
            return place / POLICY_NAME
    raise OverlaydError(f"Cannot find the bus policy {POLICY_NAME} in "
                        + ", ".join(str(p) for p in POLICY_PLACES) + ".")


class StandaloneBus:
    def __init__(self, bus_dir: BusDirectory, proc: asyncio.subprocess.Process,
                 address: str) -> None:
        self.bus_dir = bus_dir
        self.directory = bus_dir.path
        self.proc = proc
        self.address = address
        self.polkitd: asyncio.subprocess.Process | None = None
        self._stderr: list[asyncio.Future[None]] = []

    @classmethod
    async def start(cls) -> StandaloneBus:
        if shutil.which("dbus-daemon") is None:
            raise OverlaydError("--standalone needs dbus-daemon (Debian package dbus-daemon).")
        bus_dir = BusDirectory.create()  # and removes those of killed daemons
        directory = bus_dir.path
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
            bus_dir.remove()
            raise
        bus = cls(bus_dir, proc, f"unix:path={socket}")
        bus._forward(proc, "dbus-daemon")
        return bus

    def _forward(self, proc: asyncio.subprocess.Process, name: str) -> None:
        """A helper's own complaints (say, an fd limit it may not raise) go to our log."""
        async def forward() -> None:
            for stream in (proc.stderr, proc.stdout) if name == "polkitd" else (proc.stderr,):
                if stream is None:
                    continue
                async for line in stream:
                    log.debug("%s: %s", name, line.decode(errors="replace").rstrip())
        self._stderr.append(asyncio.ensure_future(forward()))

    async def start_polkitd(self, rules: Path | None,
                            runtime_dir: Path = DEFAULT_RUNTIME_DIR) -> bool:
        """polkitd on our bus, seeing the host's actions plus overlayd's; RULES, if given,
        replaces /etc/polkit-1/rules.d for it. Its mount namespace has none of the mounts of
        overlayd's (RUNTIME_DIR's included), which it would otherwise keep busy. False when
        polkitd is not installed."""
        if not POLKITD.exists():
            log.info("polkitd is not installed: only root may change overlays.")
            return False
        actions = self.directory / "polkit-actions"
        actions.mkdir()
        for f in ACTIONS_DIR.glob("*.policy"):
            shutil.copy(f, actions / f.name)
        shutil.copy(find_actions(), actions / ACTIONS_NAME)
        binds = [(actions, ACTIONS_DIR)] + ([(rules, RULES_DIR)] if rules is not None else [])
        self.polkitd = await spawn_guarded(
            str(POLKITD), "--no-debug", runtime_dir=runtime_dir, binds=binds,
            env={"DBUS_SYSTEM_BUS_ADDRESS": self.address,
                 "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        self._forward(self.polkitd, "polkitd")
        return True

    async def stop(self) -> None:
        # polkitd's guard gets the time it gives polkitd before its SIGKILL, and more: a
        # guard killed first would leave polkitd running.
        for proc, grace in ((self.polkitd, KILL_AFTER + 5), (self.proc, 5)):
            if proc is None or proc.returncode is not None:
                continue
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._stderr:
            task.cancel()
        self.bus_dir.remove()
