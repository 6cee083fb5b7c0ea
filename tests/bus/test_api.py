"""The API over a real bus, driven by busctl and gdbus as separate processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from overlayd.layout import RECORD_NAME, ZRAM_LEFTOVERS
from overlayd.state import load_record
from tests import helpers
from tests.bus.conftest import MANAGER, OVERLAY_IFACE, Daemon
from tests.kernel.zram_ledger import carries

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"


def interface_shape(xml: str, name: str) -> dict[str, object]:
    """Methods (args with names, directions, types), signals and properties (type, access,
    annotations) of interface NAME in an introspection document."""
    root = ET.fromstring(xml)
    iface = next(i for i in root.iter("interface") if i.get("name") == name)

    def args(el: ET.Element, default: str) -> list[tuple[str | None, str | None, str | None]]:
        return [(a.get("name"), a.get("direction", default), a.get("type"))
                for a in el.iter("arg")]

    return {  # a signal's arguments are "out", whether the XML says so or not
        "methods": {m.get("name"): args(m, "in") for m in iface.findall("method")},
        "signals": {s.get("name"): args(s, "out") for s in iface.findall("signal")},
        "properties": {p.get("name"): (p.get("type"), p.get("access"),
                                       {a.get("name"): a.get("value")
                                        for a in p.findall("annotation")})
                       for p in iface.findall("property")},
    }


def test_live_introspection_matches_the_xml(clean: Daemon, bus_image: Path) -> None:
    path = clean.create("intro", bus_image)
    for obj, iface in (("/org/overlayd/Overlayd1", "org.overlayd.Overlayd1.Manager"),
                       (path, OVERLAY_IFACE)):
        live = clean.run("gdbus", "introspect", "--system", "--dest", "org.overlayd.Overlayd1",
                         "--object-path", obj, "--xml", check=True).stdout
        written = (DBUS_DIR / f"{iface}.xml").read_text()
        assert interface_shape(live, iface) == interface_shape(written, iface)
    live = clean.run("gdbus", "introspect", "--system", "--dest", "org.overlayd.Overlayd1",
                     "--object-path", "/org/overlayd/Overlayd1", "--xml", check=True).stdout
    assert "org.freedesktop.DBus.ObjectManager" in live


def test_introspection_names_only_real_children(clean: Daemon, bus_image: Path) -> None:
    """dbus-next named as a child every path that merely contained the one introspected:
    overlay 'p1' showed a node 'dup' for overlay 'p1dup' (busctl tree drew p1/dup)."""
    one = clean.create("p1", bus_image)
    clean.create("p1dup", bus_image)

    def children(path: str) -> list[str]:
        xml = clean.run("gdbus", "introspect", "--system", "--dest", "org.overlayd.Overlayd1",
                        "--object-path", path, "--xml", check=True).stdout
        return [n.get("name", "") for n in ET.fromstring(xml).findall("node")]

    assert children(one) == []  # an overlay has no children
    assert sorted(children(one.rsplit("/", 1)[0])) == ["p1", "p1dup"]
    assert clean.run("busctl", "--system", "tree", "org.overlayd.Overlayd1",
                     check=True).stdout.count("p1") == 2


def test_lifecycle_with_busctl_and_gdbus(clean: Daemon, root: Path) -> None:
    img = helpers.make_image(root / "disk.img")
    before = helpers.sha256(img)
    path = clean.create("life-1", img, "size", "t", str(32 << 20))
    assert path == "/org/overlayd/Overlayd1/overlay/life_2d1"
    assert clean.prop(path, "State") == "active"
    assert clean.prop(path, "OwnerUID") == "0"
    assert clean.prop(path, "UpperSize") == str(32 << 20)
    mp = Path(clean.prop(path, "MountPoint"))
    (mp / "new.txt").write_text("over the bus\n")
    r = clean.gdbus(path, f"{OVERLAY_IFACE}.Diff")
    assert r.returncode == 0 and "('/new.txt', 'added')" in r.stdout
    assert int(clean.prop(path, "UpperUsed")) > 0
    r = clean.call("ListOverlays")
    assert '"life-1" "/org/overlayd/Overlayd1/overlay/life_2d1"' in r.stdout
    r = clean.call("GetOverlay", "s", "life-1")
    assert path in r.stdout
    r = clean.gdbus(path, f"{OVERLAY_IFACE}.Commit", "{}")
    assert r.returncode == 0, r.stderr
    assert helpers.sha256(img) != before
    r = clean.call("Discard", "sa{sv}", "life-1", "0")
    assert r.returncode == 0, r.stderr
    assert clean.call("ListOverlays").stdout.strip() == "a(so) 0"
    assert helpers.mounts_under(str(clean.runtime)) == []


def test_create_with_an_fd_the_caller_opened(clean: Daemon, bus_image: Path) -> None:
    """overlayctl opens an image file itself and sends the fd (busctl cannot send fds)."""
    r = clean.ctl("create", "byfd", str(bus_image))
    assert r.returncode == 0, r.stderr
    path = clean.call("GetOverlay", "s", "byfd").stdout.split('"')[1]
    assert clean.prop(path, "Image") == str(bus_image)
    assert clean.prop(path, "FsType") == "ext4"


def test_caller_identity_reaches_the_daemon(clean: Daemon, bus_image: Path) -> None:
    path = clean.create("owned", bus_image)
    r = clean.call("ListOverlays", uid=65534)
    assert r.returncode == 0 and '"owned"' in r.stdout
    r = clean.busctl("get-property", "org.overlayd.Overlayd1", path, OVERLAY_IFACE, "State",
                     uid=65534)
    assert r.returncode == 0 and "active" in r.stdout
    r = clean.gdbus("/org/overlayd/Overlayd1", "org.overlayd.Overlayd1.Manager.Create", "x",
                    f"{{'image': <'{bus_image}'>}}", uid=65534)
    assert "InteractiveAuthorizationRequired" in r.stderr and "uid 65534" in r.stderr
    r = clean.gdbus(path, f"{OVERLAY_IFACE}.Discard", "{}", uid=65534)
    assert "InteractiveAuthorizationRequired" in r.stderr and "manage-others" in r.stderr
    r = clean.gdbus(path, f"{OVERLAY_IFACE}.Diff", uid=65534)
    assert "manage-others" in r.stderr, "the diff of another user's overlay is not open to all"
    assert clean.prop(path, "State") == "active"


def test_two_creates_of_one_name_at_once(clean: Daemon, bus_image: Path) -> None:
    argv = ["busctl", "--system", "call", *MANAGER, "Create", "sa{sv}", "race", "1", "image",
            "s", str(bus_image)]
    procs = [subprocess.Popen(argv, env=clean.env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes.count(0) == 1, results
    assert all("already exists" in err for (_out, err), c in zip(results, codes, strict=True)
               if c != 0)


# -- bad input: a clear error, never a traceback or a path of the daemon's -----------------

LEAKS = re.compile(r"Traceback|File \"|\.py\b|site-packages|/work/|dbus_next")


def V(sig: str, value: object) -> Variant:  # reads like the D-Bus type it builds
    return Variant(sig, value)


# The error names follow one rule (README, "Errors"): a call of the wrong shape is
# InvalidArgs; a well-formed spec with a bad value is InvalidSpec, as when the engine finds it.
BAD_CALLS: dict[str, tuple[str, str, list[Any], str, str]] = {
    "wrong argument types": ("Create", "ss", ["x", "y"], "InvalidArgs", "takes arguments"),
    "unknown spec key": ("Create", "sa{sv}", ["x", {"colour": V("s", "red")}], "InvalidArgs",
                         "Unknown spec key 'colour'"),
    "spec key of the wrong type": ("Create", "sa{sv}", ["x", {"size": V("b", True)}],
                                   "InvalidArgs", "must be of type 't'"),
    "empty name": ("Create", "sa{sv}", ["", {"image": V("s", "/x")}], "InvalidSpec",
                   "a name is 1 to 64"),
    "10,000-character name": ("Create", "sa{sv}", ["n" * 10_000, {"image": V("s", "/x")}],
                              "InvalidSpec", "a name is 1 to 64"),
    "name with a slash": ("Create", "sa{sv}", ["a/b", {"image": V("s", "/x")}], "InvalidSpec",
                          "'a/b'"),
    "name ..": ("Create", "sa{sv}", ["..", {"image": V("s", "/x")}], "InvalidSpec", "'..'"),
    "name with a newline": ("Create", "sa{sv}", ["a\nb", {"image": V("s", "/x")}],
                            "InvalidSpec", "a name is 1 to 64"),
    "relative image path": ("Create", "sa{sv}", ["x", {"image": V("s", "disk.img")}],
                            "InvalidSpec", "absolute path"),
    "no image": ("Create", "sa{sv}", ["x", {}], "InvalidSpec", "exactly one of 'image'"),
    "size 0": ("Create", "sa{sv}", ["x", {"image": V("s", "/x"), "size": V("t", 0)}],
               "InvalidSpec", "more than 0 bytes"),
    "image fd index with no fd": ("Create", "sa{sv}", ["x", {"image_fd": V("h", 0)}],
                                  "InvalidArgs", "image_fd"),
    "unknown Commit option": ("Commit", "sa{sv}", ["x", {"now": V("b", True)}], "InvalidArgs",
                              "Unknown Commit option"),
    "Commit of an unknown overlay": ("Commit", "sa{sv}", ["ghost", {}], "NoSuchOverlay",
                                     "no overlay named 'ghost'"),
    "Discard of an unknown overlay": ("Discard", "sa{sv}", ["ghost", {}], "NoSuchOverlay",
                                      "no overlay named 'ghost'"),
    "force of the wrong type": ("Discard", "sa{sv}", ["ghost", {"force": V("s", "yes")}],
                                "InvalidArgs", "must be of type 'b'"),
    "GetOverlay of an unknown overlay": ("GetOverlay", "s", ["ghost"], "NoSuchOverlay",
                                         "ghost"),
}


def busctl_args(signature: str, body: list[Any]) -> list[str]:
    """busctl's command-line form of BODY, for the few types used above."""
    out = [signature]
    for value in body:
        if isinstance(value, dict):
            out.append(str(len(value)))
            for key, v in value.items():
                out += [key, v.signature, str(v.value).lower() if v.signature == "b"
                        else str(v.value)]
        else:
            out.append(str(value))
    return out


async def raw_call(address: str, member: str, signature: str, body: list[Any],
                   fds: list[int] | None = None) -> tuple[str | None, str]:
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    try:
        reply = await bus.call(Message(destination="org.overlayd.Overlayd1",
                                       path="/org/overlayd/Overlayd1",
                                       interface="org.overlayd.Overlayd1.Manager",
                                       member=member, signature=signature, body=body,
                                       unix_fds=fds or []))
    finally:
        bus.disconnect()
    text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
    return (reply.error_name if reply.message_type is MessageType.ERROR else None), text


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_gets_a_clear_error(daemon: Daemon, run: Any, case: str) -> None:
    member, signature, body, error, words = BAD_CALLS[case]
    shown = []
    if "image_fd" not in str(body):  # busctl cannot send fds
        r = daemon.call(member, *busctl_args(signature, body))
        assert r.returncode != 0 and words in r.stderr, r.stderr
        shown.append(r.stderr)
    name, text = run(raw_call(daemon.address, member, signature, body))
    assert name is not None and name.endswith("." + error), (name, text)
    assert words in text
    for t in [text, *shown]:
        assert not LEAKS.search(t), t
    assert daemon.call("ListOverlays").returncode == 0, "the daemon keeps serving"


@pytest.mark.parametrize("kind", ["socket", "directory"])
def test_fd_that_is_not_an_image(daemon: Daemon, run: Any, root: Path, kind: str) -> None:
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        fd = sock.fileno()
    else:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name, text = run(raw_call(daemon.address, "Create", "sa{sv}",
                                  ["x", {"image_fd": V("h", 0)}], [fd]))
    finally:
        sock.close() if kind == "socket" else os.close(fd)
    assert name == "org.overlayd.Overlayd1.Error.InvalidSpec" and kind in text, text
    assert not LEAKS.search(text)


def test_symlink_to_a_device_the_caller_did_not_name(clean: Daemon, root: Path) -> None:
    from overlayd.host import loop

    img = helpers.make_image(root / "dev.img")
    with open(img, "rb") as f:
        dev = loop.attach(f.fileno(), read_only=True)  # the test's own block device
    try:
        link = root / "innocent.img"
        os.symlink(dev.path, link)
        r = clean.call("Create", "sa{sv}", "x", "1", "image", "s", str(link))
        assert r.returncode != 0 and "symbolic link to the block device" in r.stderr
        r = clean.call("Create", "sa{sv}", "named", "1", "image", "s", dev.path)
        assert r.returncode == 0, r.stderr  # the device named as itself is fine
        clean.call("Discard", "sa{sv}", "named", "0")
    finally:
        dev.release()  # autoclear detaches it


def test_a_nul_in_a_name_never_reaches_the_daemon(daemon: Daemon, run: Any) -> None:
    """D-Bus strings cannot hold NUL: the bus daemon drops a client that sends one."""
    async def send() -> str:
        bus = await MessageBus(bus_address=daemon.address).connect()
        try:
            await asyncio.wait_for(bus.call(Message(
                destination="org.overlayd.Overlayd1", path="/org/overlayd/Overlayd1",
                interface="org.overlayd.Overlayd1.Manager", member="Create",
                signature="sa{sv}", body=["a\0b", {"image": V("s", "/x")}])), 10)
        except EOFError:
            return "disconnected"
        finally:
            with contextlib.suppress(Exception):  # collect the disconnect's EOFError
                await bus.wait_for_disconnect()
        return "answered"

    assert run(send()) == "disconnected"
    assert daemon.call("ListOverlays").returncode == 0, "overlayd keeps serving"


def test_only_root_may_own_the_name(daemon: Daemon) -> None:
    r = daemon.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                      "org.freedesktop.DBus", "RequestName", "su", "org.overlayd.Overlayd1",
                      "4", uid=65534)
    assert r.returncode != 0 and "Access denied" in r.stderr


def test_errors_of_the_standard_interfaces_are_quiet(clean: Daemon, bus_image: Path) -> None:
    path = clean.create("std", bus_image)
    r = clean.busctl("get-property", "org.overlayd.Overlayd1", path, OVERLAY_IFACE, "Colour")
    assert r.returncode != 0
    r = clean.busctl("get-property", "org.overlayd.Overlayd1", path, "org.example.Nope", "X")
    assert r.returncode != 0
    r = clean.busctl("call", "org.overlayd.Overlayd1", path, OVERLAY_IFACE, "Explode")
    assert r.returncode != 0 and "could not be found" in r.stderr
    log = (clean.root / "overlayd.log").read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log


def test_huge_size_is_limit_exceeded(clean: Daemon, bus_image: Path) -> None:
    r = clean.call("Create", "sa{sv}", "huge", "2", "image", "s", str(bus_image), "size", "t",
                   str((1 << 64) - 1))
    assert r.returncode != 0 and "memory" in r.stderr


def test_fds_sent_with_any_message_are_closed(daemon: Daemon, run: Any, root: Path) -> None:
    """A caller cannot exhaust the daemon's fds with calls our methods do not serve."""
    def fds() -> int:
        return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))

    async def flood() -> None:
        bus = await MessageBus(bus_address=daemon.address, negotiate_unix_fd=True).connect()
        files = [os.open(root, os.O_RDONLY) for _ in range(16)]
        try:
            for member, iface in (("Ping", "org.freedesktop.DBus.Peer"),
                                  ("Explode", "org.overlayd.Overlayd1.Manager"),
                                  ("ListOverlays", "org.overlayd.Overlayd1.Manager")):
                for _ in range(100):
                    await bus.call(Message(destination="org.overlayd.Overlayd1",
                                           path="/org/overlayd/Overlayd1", interface=iface,
                                           member=member, unix_fds=files))
        finally:
            for f in files:
                os.close(f)
            bus.disconnect()

    before = fds()
    run(flood())
    assert fds() <= before + 2, (before, fds())


@pytest.mark.skipif(not os.path.exists("/sys/class/zram-control"), reason="no zram")
def test_a_zram_upper_through_overlayctl(clean: Daemon, root: Path) -> None:
    """overlayctl create --upper zram: the properties say zram and show the compression;
    status and --json show them; discard removes the device."""
    img = helpers.make_image(root / "disk.img")
    r = clean.ctl("create", "zr", str(img), "--upper", "zram", "--size", "32M")
    assert r.returncode == 0, r.stderr
    # The device and UUID the daemon's record names: what must be gone after the discard
    # (not the machine's set of zram devices, which others change meanwhile on a busy host).
    upper = load_record((clean.runtime / "zr" / RECORD_NAME).read_bytes()).upper
    assert upper.device and carries(upper.device, upper.fs_uuid)
    path = clean.call("GetOverlay", "s", "zr").stdout.split('"')[1]
    assert clean.prop(path, "UpperKind") == "zram"
    mp = Path(clean.prop(path, "MountPoint"))
    (mp / "text.txt").write_text("the same line again and again\n" * 50000)
    os.sync()
    assert 0 < int(clean.prop(path, "UpperCompressedSize")) < \
        int(clean.prop(path, "UpperOriginalSize"))
    r = clean.ctl("status", "zr")
    assert r.returncode == 0 and re.search(r"Upper: zram: .* of RAM, ratio \d", r.stdout), \
        r.stdout

    data = json.loads(clean.ctl("status", "zr", "--json").stdout)
    assert data["UpperKind"] == "zram" and data["UpperOriginalSize"] > 0
    r = clean.call("Discard", "sa{sv}", "zr", "0")
    assert r.returncode == 0, r.stderr
    assert not carries(upper.device, upper.fs_uuid), f"{upper.device} is left"
    assert not (clean.runtime / ZRAM_LEFTOVERS).exists() and \
        not (clean.runtime / "zr").exists(), "nothing is noted for a later removal"
