"""The daemon as a service: concurrency, signals, standalone lifetime, overlayctl."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

import overlayd
from tests import helpers
from tests.bus.conftest import MANAGER, Daemon, start_daemon, stop_daemon
from tests.bus.test_jobs import Monitor
from tests.gate import OpenGate


def test_a_long_commit_does_not_hold_up_other_calls(clean: Daemon, root: Path) -> None:
    """The commit is held at a known point (an OpenGate on the file it copies), for as
    long as the test needs: no timing, whatever the speed of the machine."""
    img = helpers.make_image(root / "big.img")
    path = clean.create("slow", img)
    mp = Path(clean.prop(path, "MountPoint"))
    (mp / "big.bin").write_bytes(os.urandom(1 << 20))
    upper = clean.runtime / "slow" / "rw" / "upper"
    other = helpers.make_image(root / "other.img")
    with OpenGate(upper / "big.bin") as gate:
        commit = subprocess.Popen(["busctl", "--system", "--timeout=300", "call", *MANAGER,
                                   "Commit", "sa{sv}", "slow", "0"], env=clean.env,
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            gate.wait()  # the commit is copying big.bin, and stays there until released
            assert clean.prop(path, "State") == "committing"
            # While it runs, the rest of the API answers: reads, and changes to others.
            assert '"slow"' in clean.call("ListOverlays").stdout
            assert clean.prop(path, "Name") == "slow"
            clean.create("quick", other)
            assert clean.call("Discard", "sa{sv}", "quick", "0").returncode == 0
            assert clean.prop(path, "State") == "committing", "all while the commit ran"
            # A call on the same overlay waits its turn: it has reached the daemon while
            # the commit is held, and answers only once the commit is done.
            discard = discard_delivered(clean, "slow")
            assert discard.poll() is None, "the Discard waits for the commit"
        finally:
            gate.release()
            _out, err = commit.communicate(timeout=300)
    assert commit.returncode == 0, err
    _out, err = discard.communicate(timeout=60)
    assert discard.returncode == 0, err


def discard_delivered(d: Daemon, name: str) -> subprocess.Popen[str]:
    """A Discard of NAME by busctl, returned once dbus-daemon has handed it to the daemon
    (dbus-monitor saw it go; dbus-monitor watches from the NameLost it is sent when it
    becomes a monitor)."""
    watch = Monitor(d, ("dbus-monitor", "--system",
                        "type='method_call',interface='org.overlayd.Overlayd1.Manager',"
                        "member='Discard'"), header_lines=0)
    try:
        watch.until("member=NameLost")
        discard = subprocess.Popen(["busctl", "--system", "--timeout=300", "call", *MANAGER,
                                    "Discard", "sa{sv}", name, "0"], env=d.env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        watch.until(f'string "{name}"')
    finally:
        watch.stop()
    return discard


async def _watch(address: str, actions: Any) -> list[tuple[str, str, list[Any]]]:
    bus = await MessageBus(bus_address=address).connect()
    seen: list[tuple[str, str, list[Any]]] = []

    def on(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.sender != bus.unique_name:
            seen.append((msg.path, msg.member, msg.body))

    bus.add_message_handler(on)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=["type='signal',sender='org.overlayd.Overlayd1'"]))
    await actions()
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="GetId"))  # a round trip
    bus.disconnect()
    return seen


def test_signals_for_objects_and_state(clean: Daemon, root: Path, run: Any) -> None:
    import asyncio

    img = helpers.make_image(root / "sig.img")

    async def actions() -> None:
        for argv in (["Create", "sa{sv}", "sig", "1", "image", "s", str(img)],
                     ["Commit", "sa{sv}", "sig", "0"], ["Discard", "sa{sv}", "sig", "0"]):
            await asyncio.to_thread(clean.call, *argv)
        await asyncio.sleep(0.2)

    seen = run(_watch(clean.address, actions))
    path = "/org/overlayd/Overlayd1/overlay/sig"
    added = [s for s in seen if s[1] == "InterfacesAdded"]
    assert added and added[0][0] == "/org/overlayd/Overlayd1" and added[0][2][0] == path
    assert "org.overlayd.Overlayd1.Overlay" in added[0][2][1]
    removed = [s for s in seen if s[1] == "InterfacesRemoved" and s[2][0] == path]
    assert removed and removed[0][0] == "/org/overlayd/Overlayd1"
    jobs = [(s[1], s[2][0]) for s in seen if s[1].startswith("Interfaces") and
            s[2][0].startswith("/org/overlayd/Overlayd1/job/")]
    assert [k for k, _ in jobs] == ["InterfacesAdded", "InterfacesRemoved"], \
        "the commit was a job, announced and removed"
    states = [s[2][1]["State"].value for s in seen
              if s[1] == "PropertiesChanged" and s[0] == path and "State" in s[2][1]]
    assert states[:2] == ["committing", "active"], states
    assert "discarding" in states


def test_standalone_stops_what_it_started_and_leaves_overlays(root: Path) -> None:
    img = helpers.make_image(root / "keep.img")
    d = start_daemon(root)
    bus_dir = Path(d.address.removeprefix("unix:path=")).parent
    dbus_pid = int(next(p for p in os.listdir("/proc") if p.isdigit()
                        and _is_child_dbus(int(p), d.proc.pid)))
    d.create("kept", img)
    log = stop_daemon(d)
    assert "Traceback" not in log
    assert not bus_dir.exists(), "the private bus directory is removed"
    assert not Path(f"/proc/{dbus_pid}").exists(), "the dbus-daemon it started is gone"
    assert any("kept" in m for m in helpers.mounts_under(str(root))), "overlays stay"
    # A new daemon adopts it; --discard-on-exit cleans it up on the way out.
    d2 = start_daemon(root, "--discard-on-exit")
    assert '"kept"' in d2.call("ListOverlays").stdout
    stop_daemon(d2)
    assert helpers.mounts_under(str(root)) == []


def _is_child_dbus(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]) == parent and "(dbus-daemon)" in stat


def test_overlayctl(clean: Daemon, root: Path) -> None:
    img = helpers.make_image(root / "ctl.img")
    r = clean.ctl("create", "ctl", str(img), "--size", "64M", "--option", "nosuid")
    assert r.returncode == 0, r.stderr
    status = json.loads(clean.ctl("status", "ctl", "--json").stdout)
    assert status["UpperSize"] == 64 << 20 and status["MountOptions"] == ["nosuid"]
    (Path(status["MountPoint"]) / "f").write_text("f")
    assert json.loads(clean.ctl("diff", "ctl", "--json").stdout) == [
        {"path": "/f", "kind": "added"}]
    listed = json.loads(clean.ctl("list", "--json").stdout)
    assert [o["Name"] for o in listed] == ["ctl"]
    text = clean.ctl("list").stdout
    assert "ctl" in text and "1 overlay listed." in text
    assert "Mount point:" in clean.ctl("status", "ctl").stdout
    assert clean.ctl("commit", "ctl").returncode == 0
    # sysexits-style codes (overlayctl(1), EXIT STATUS)
    assert clean.ctl("discard", "ghost").returncode == 66
    assert clean.ctl("create", "ctl", str(img)).returncode == 73
    assert clean.ctl("create", "bad/x", str(img)).returncode == 65  # InvalidSpec
    assert clean.ctl("create", "y", str(img), "--size", "12Q").returncode == 64
    assert clean.ctl("frobnicate").returncode == 64  # argparse's usage error too
    r = clean.ctl("--no-ask-password", "discard", "ctl", uid=65534)
    assert r.returncode == 77 and "uid 65534" in r.stderr and "Traceback" not in r.stderr
    # the global option after the command works the same
    r = clean.ctl("discard", "ctl", "--no-ask-password", uid=65534)
    assert r.returncode == 77 and "uid 65534" in r.stderr
    assert clean.ctl("discard", "ctl").returncode == 0
    assert "0 overlays listed." in clean.ctl("list").stdout


def test_overlayctl_without_a_daemon(root: Path) -> None:
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={root}/nothing")
    r = subprocess.run([str(Path(os.sys.executable).parent / "overlayctl"), "list"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 69 and "Cannot connect" in r.stderr
    assert "No such file or directory" in r.stderr and "Errno" not in r.stderr, r.stderr
    r = subprocess.run([str(Path(os.sys.executable).parent / "overlayctl"), "discard", "x"],
                       env=env, capture_output=True, text=True)  # dbus-next's client
    assert r.returncode == 69 and "No such file or directory" in r.stderr
    assert "Errno" not in r.stderr, r.stderr


def test_managed_objects_agree_with_the_property_getters(clean: Daemon, root: Path,
                                                          run: Any) -> None:
    img = helpers.make_image(root / "mo.img")
    clean.create("mo-a", img)
    clean.create("mo-b", img, "size", "t", str(16 << 20))

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        bus = await MessageBus(bus_address=clean.address).connect()
        try:
            (objects,) = (await bus.call(Message(
                destination="org.overlayd.Overlayd1", path="/org/overlayd/Overlayd1",
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects"))).body
            getall = {}
            for path in objects:
                (props,) = (await bus.call(Message(
                    destination="org.overlayd.Overlayd1", path=path,
                    interface="org.freedesktop.DBus.Properties", member="GetAll",
                    signature="s", body=["org.overlayd.Overlayd1.Overlay"]))).body
                getall[path] = props
        finally:
            bus.disconnect()
        return objects, getall

    objects, getall = run(both())
    assert sorted(objects) == ["/org/overlayd/Overlayd1/overlay/mo_2da",
                               "/org/overlayd/Overlayd1/overlay/mo_2db"]
    for path, ifaces in objects.items():
        managed = ifaces["org.overlayd.Overlayd1.Overlay"]
        assert {k: (v.signature, v.value) for k, v in managed.items()} == \
            {k: (v.signature, v.value) for k, v in getall[path].items()}


def test_polkitd_does_not_pin_the_overlays_it_saw_at_start(root: Path) -> None:
    img = helpers.make_image(root / "pin.img")
    first = start_daemon(root)
    first.create("pinned", img)
    stop_daemon(first)  # the overlay stays; the next daemon's polkitd starts with it mounted
    second = start_daemon(root, "--discard-on-exit")
    try:
        assert second.call("Commit", "sa{sv}", "pinned", "0").returncode == 0

        def loops() -> list[str]:
            return [d for d, b in helpers.attached_loops().items() if b == str(img)]

        for _ in range(100):
            if len(loops()) == 1:
                break
            time.sleep(0.02)
        assert len(loops()) == 1, "the image's old loop device was released after the commit"
        assert second.call("Discard", "sa{sv}", "pinned", "0").returncode == 0
        for _ in range(100):
            if not loops():
                break
            time.sleep(0.02)
        assert loops() == [], "nothing keeps the discarded overlay's loop device"
    finally:
        stop_daemon(second)
    assert helpers.mounts_under(str(root)) == []


def test_overlayctl_global_options_json_legend_quiet_version(clean: Daemon, root: Path) -> None:
    """Global options before or after the command; --json says what a command did;
    --no-legend and -q as in systemctl; --version and the Manager's Version."""
    img = helpers.make_image(root / "opts.img")
    r = clean.ctl("--json", "create", "opts", str(img), "--size", "32M")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["overlay"] == "opts" and made["created"] is True
    assert made["size"] == 32 << 20 and made["object_path"].endswith("/opts")
    assert json.loads(clean.ctl("--json", "list").stdout)[0]["Name"] == "opts"
    assert json.loads(clean.ctl("list", "--json").stdout)[0]["Name"] == "opts"
    # --no-legend: the rows only
    assert clean.ctl("--no-legend", "list").stdout.split()[0:2] == ["opts", "active"]
    assert "listed" not in clean.ctl("list", "--no-legend").stdout
    # -q: no messages, the exit code says it
    (Path(made["mountpoint"]) / "f").write_text("f")
    r = clean.ctl("-q", "commit", "opts")
    assert r.returncode == 0 and r.stdout == "", r.stdout
    r = clean.ctl("commit", "opts", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["committed"] is True, r.stdout
    r = clean.ctl("--json", "discard", "opts")
    assert json.loads(r.stdout) == {"overlay": "opts", "discarded": True}
    r = clean.ctl("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"overlayctl {overlayd.__version__}"
    r = clean.busctl("get-property", *MANAGER[:2], "org.overlayd.Overlayd1.Manager", "Version")
    assert r.stdout.strip() == f's "{overlayd.__version__}"', r.stderr
