"""What must not stop or wedge the daemon: flooding clients, a lost bus, signals at awkward
moments, a restart with many overlays, calls without an interface, megabyte arguments."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from overlayd.config import DaemonConfig
from overlayd.host.linux import LinuxHost
from overlayd.manager import OverlayManager
from overlayd.model import parse_spec
from tests import helpers
from tests.bus.conftest import NOBODY, VENV_BIN, Daemon, start_daemon, stop_daemon

FLOOD = Path(__file__).with_name("flood.py")


@contextmanager
def flooding(d: Daemon, count: int, clients: int = 1, *args: str) -> Iterator[None]:
    """CLIENTS processes of uid 65534, each with COUNT calls in flight whose replies it never
    reads, for the time of the with block."""
    procs = [subprocess.Popen([*NOBODY, str(VENV_BIN / "python"), str(FLOOD), d.address,
                               str(count), *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    try:
        for p in procs:
            assert p.stdout is not None
            state = "running" if d.proc.poll() is None else f"exited with {d.proc.returncode}"
            assert p.stdout.readline().strip() == "sent", f"no flood sent; overlayd {state}"
        yield
    finally:
        for p in procs:
            p.communicate(timeout=30)  # closing its stdin lets it go


def answers(d: Daemon) -> bool:
    return d.call("ListOverlays").returncode == 0


def test_clients_flooding_calls_do_not_stop_the_daemon(root: Path) -> None:
    d = start_daemon(root)
    try:
        with flooding(d, 500, 3):
            assert answers(d), "others are served while the flooders hold their replies"
            with flooding(d, 300, 1, "/org/overlayd/Overlayd1", "ListOverlays"):
                assert answers(d)
        assert answers(d)
        assert d.proc.poll() is None, "the daemon is still running"
    finally:
        log = stop_daemon(d)
    assert d.proc.returncode == 0, log
    assert "Traceback" not in log and "never retrieved" not in log, log


def test_losing_the_bus_is_a_failure(root: Path) -> None:
    """Restart=on-failure must bring the daemon back when its bus connection is gone."""
    d = start_daemon(root)
    dbus = next(int(p) for p in os.listdir("/proc") if p.isdigit()
                and _child_named(int(p), d.proc.pid, "dbus-daemon"))
    os.kill(dbus, signal.SIGKILL)  # the dbus-daemon this overlayd started, by its PID
    d.proc.communicate(timeout=30)
    log = (root / "overlayd.log").read_text()
    assert d.proc.returncode == 1, log
    assert "Lost the connection to the bus" in log
    assert "never retrieved" not in log, log


def _child_named(pid: int, parent: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]) == parent and f"({name})" in stat


def test_sigterm_right_after_the_ready_line_stops_cleanly(root: Path) -> None:
    for attempt in range(3):  # the window was short: try it more than once
        log_path = root / f"overlayd-{attempt}.log"
        with open(log_path, "w") as err:
            proc = subprocess.Popen([str(VENV_BIN / "overlayd"), "--standalone", "--runtime-dir",
                                     str(root / "run")], stdout=subprocess.PIPE, stderr=err,
                                    text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        log = log_path.read_text()
        assert line.startswith("DBUS_SYSTEM_BUS_ADDRESS="), log
        assert proc.returncode == 0, log
        assert "Stopped" in log and "Traceback" not in log, log


def test_a_restart_with_many_live_overlays(root: Path, run: Any) -> None:
    """Adopted overlays are exported before the name is owned, without a burst of
    InterfacesAdded (that burst once stopped the restart from about 200 overlays)."""
    count = 250
    lower = root / "lower"  # a directory image: no loop device per overlay
    lower.mkdir()
    (lower / "f").write_text("f")
    config = DaemonConfig(runtime_dir=root / "run", default_size=1 << 20)
    manager = OverlayManager(config, LinuxHost())
    run(manager.start())
    d = None
    try:
        for i in range(count):
            run(manager.create(parse_spec({"name": f"many-{i:03d}", "image": str(lower)})))
        d = start_daemon(root, "--discard-on-exit")
        listed = d.call("ListOverlays").stdout
        assert listed.startswith(f"a(so) {count} "), listed[:100]
        objects = d.busctl("call", "org.overlayd.Overlayd1", "/org/overlayd/Overlayd1",
                           "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        assert objects.returncode == 0 and objects.stdout.count('"State" s "active"') == count
    finally:
        if d is not None and d.proc.poll() is None:
            log = stop_daemon(d)
            assert "Traceback" not in log, log
        # Whatever is left (say, the daemon did not start): discard it here.
        again = OverlayManager(config, LinuxHost())
        run(again.start())
        for rec in again.list():
            run(again.discard(rec.name, force=True))
    assert helpers.mounts_under(str(root)) == []


async def _call(address: str, path: str, interface: str | None, member: str,
                signature: str = "", body: list[Any] | None = None) -> Message:
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(Message(destination="org.overlayd.Overlayd1", path=path,
                                       interface=interface, member=member,
                                       signature=signature, body=body or []))
    finally:
        bus.disconnect()
    assert reply is not None
    return reply


def test_a_call_without_an_interface(daemon: Daemon, run: Any) -> None:
    """The interface header is optional (D-Bus specification): the method is found by its
    name among the interfaces of the object."""
    root = "/org/overlayd/Overlayd1"
    reply = run(_call(daemon.address, root, None, "ListOverlays"))
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert reply.signature == "a(so)"
    reply = run(_call(daemon.address, root, None, "GetOverlay", "s", ["ghost"]))
    assert reply.error_name == "org.overlayd.Overlayd1.Error.NoSuchOverlay", reply.body
    reply = run(_call(daemon.address, root, None, "Introspect"))
    assert reply.message_type is MessageType.METHOD_RETURN
    assert "org.overlayd.Overlayd1.Manager" in reply.body[0]
    reply = run(_call(daemon.address, root, None, "GetManagedObjects"))
    assert reply.message_type is MessageType.METHOD_RETURN
    reply = run(_call(daemon.address, root, None, "Explode"))
    assert reply.error_name == "org.freedesktop.DBus.Error.UnknownMethod", reply.body
    assert "Explode" in reply.body[0]
    reply = run(_call(daemon.address, root, None, "ListOverlays", "s", ["x"]))
    assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs", reply.body
    assert "takes arguments of type ''" in reply.body[0]


def test_no_reply_repeats_a_megabyte_of_input(daemon: Daemon, run: Any) -> None:
    huge = "n" * (1 << 20)
    root = "/org/overlayd/Overlayd1"
    manager = "org.overlayd.Overlayd1.Manager"
    calls = [
        (root, manager, "GetOverlay", "s", [huge]),
        (root, manager, "Commit", "sa{sv}", [huge, {}]),
        (root, manager, "Discard", "sa{sv}", [huge, {}]),
        (root, manager, "Create", "sa{sv}", ["x", {huge: Variant("s", "/x")}]),
        (root, manager, "Commit", "sa{sv}", ["x", {huge: Variant("b", True)}]),
        (root, "org.freedesktop.DBus.Properties", "Get", "ss", [huge, "State"]),
        (root, "org.freedesktop.DBus.Properties", "GetAll", "s", [huge]),
        (root, "org.freedesktop.DBus.Properties", "Get", "ss", [manager, huge]),
        (root, "org.example." + huge[:200], "Explode", "", []),
        (root, None, huge[:200], "", []),
    ]
    for path, interface, member, signature, body in calls:
        reply = run(_call(daemon.address, path, interface, member, signature, body))
        assert reply.message_type is MessageType.ERROR, (member, reply.body)
        assert len(reply.body[0]) < 400, (member, reply.error_name, reply.body[0][:400])
        assert "nnnn..." in reply.body[0] or member == "Explode", reply.body[0]
    assert daemon.call("ListOverlays").returncode == 0


DENY_OWN = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
    <deny own="org.overlayd.Overlayd1"/>
  </policy>
</busconfig>
"""


def test_a_failed_start_leaves_nothing_behind(root: Path) -> None:
    """A bus that will not let overlayd own its name: the start fails with a sentence, and
    once that bus is gone, dbus-next has no unread exception to complain about."""
    import asyncio
    import gc

    from overlayd.bus.auth import RootOnly
    from overlayd.bus.server import BusServer
    from overlayd.errors import OverlaydError

    socket_path = root / "bus.sock"
    (root / "bus.conf").write_text(DENY_OWN.format(socket=socket_path))
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={root / 'bus.conf'}", "--nofork",
                            "--nopidfile", "--print-address=1"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    complaints: list[str] = []

    async def attempt() -> str:
        manager = OverlayManager(DaemonConfig(runtime_dir=root / "run"), LinuxHost())
        try:
            await asyncio.wait_for(
                BusServer.start(manager, f"unix:path={socket_path}", RootOnly()), 30)
        except OverlaydError as e:
            return str(e)
        return "started"

    async def start() -> str:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: complaints.append(str(context.get("message"))))
        failure = await attempt()
        bus.terminate()  # the bus goes away, as --standalone's does after a failed start
        await asyncio.to_thread(bus.wait)
        await asyncio.sleep(0.2)  # the reader of a connection left open sees EOF now
        gc.collect()  # and a future with an exception nobody read complains when collected
        return failure

    try:
        assert bus.stdout is not None and bus.stdout.readline()
        failure = asyncio.run(start())
    finally:
        bus.kill()
        bus.wait()
    assert "Cannot own org.overlayd.Overlayd1" in failure, failure
    assert complaints == []
