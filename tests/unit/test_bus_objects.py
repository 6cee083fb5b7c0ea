"""The bus objects without a bus: object paths, the property table and what is made of it
(getters, GetAll values, PropertiesChanged values, introspection), against a stub manager."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from dbus_next import Variant

import overlayd
from overlayd.bus.names import bus_label, overlay_path
from overlayd.bus.objects import (
    CONST,
    LIVE,
    PROPERTIES,
    SIGNALLED,
    ManagerInterface,
    OverlayInterface,
    signalled_values,
)
from overlayd.config import DaemonConfig
from overlayd.errors import NoSuchOverlay
from overlayd.model import MergeEngine, OverlayState, Upper, UpperUsage

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"


@dataclass(frozen=True)
class Record:
    """What the bus reads of an overlay record (the manager's public API)."""

    name: str = "demo"
    state: OverlayState = OverlayState.ACTIVE
    image: str = "/srv/disk.img"
    mountpoint: str = "/run/overlayd/mnt/demo"
    fstype: str = "ext4"
    loop_device: str = "/dev/loop7"
    size: int = 64 << 20
    owner_uid: int = 1000
    created_usec: int = 1_700_000_000_000_000
    mount_options: tuple[str, ...] = ("nosuid", "nodev")
    half_committed: bool = False
    error: str = ""
    layers: tuple[Any, ...] = ()
    upper: Upper = field(default_factory=lambda: Upper(size=64 << 20))
    partition: str = ""
    partition_offset: int = 0
    partition_size: int = 0
    engine: MergeEngine = MergeEngine.KERNEL


class StubManager:
    """The part of OverlayManager the bus uses for reading, with usage reads counted."""

    def __init__(self, *records: Record) -> None:
        self.config = DaemonConfig()
        self.records = {r.name: r for r in records}
        self.listeners: list[Callable[[str, Any], None]] = []
        self.usage_reads = 0
        self.space_reads = 0

    def list(self) -> list[Record]:
        return [self.records[n] for n in sorted(self.records)]

    def get(self, name: str) -> Record:
        try:
            return self.records[name]
        except KeyError:
            raise NoSuchOverlay(name) from None

    def usage_now(self, name: str) -> UpperUsage:
        self.usage_reads += 1
        return UpperUsage(size=self.get(name).size, used=12288, inodes_used=3)

    def image_space(self, name: str) -> tuple[int, int]:
        self.space_reads += 1
        return 1 << 30, 300 << 20

    def total_limit(self) -> int:
        return 4 << 30

    def fd_path(self, fd: int) -> str:
        return f"/proc/self/fd/{fd}"

    def commit_at_shutdown(self, name: str) -> bool:
        return False

    def root_overlay(self) -> Record | None:
        return self.records.get("root")

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        self.listeners.append(listener)

    def change(self, name: str, rec: Record | None) -> None:
        if rec is None:
            del self.records[name]
        else:
            self.records[name] = rec
        for fn in self.listeners:
            fn(name, rec)


class StubUsage:
    """The usage watch's part the objects read: every overlay's level."""

    def __init__(self) -> None:
        self.levels: dict[str, str] = {}

    def level(self, name: str) -> str:
        return self.levels.get(name, "ok")


@dataclass
class StubService:
    manager: StubManager
    usage: StubUsage = field(default_factory=StubUsage)


def overlay(manager: StubManager, name: str = "demo") -> OverlayInterface:
    return OverlayInterface(StubService(manager), name)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "label"), [
    ("demo", "demo"), ("a-b", "a_2db"), ("a.b_c", "a_2eb_5fc"), ("1x", "_31x"),
    ("x1", "x1"), ("", "_"), ("é", "_c3_a9"),
])
def test_bus_label_escapes_like_systemd(name: str, label: str) -> None:
    assert bus_label(name) == label
    assert overlay_path(name) == "/org/overlayd/Overlayd1/overlay/" + label


def xml_properties(xml: str, name: str = "org.overlayd.Overlayd1.Overlay"
                   ) -> dict[str, tuple[str | None, str | None, str]]:
    """name -> (type, access, EmitsChangedSignal) of the interface NAME in XML."""
    iface = next(i for i in ET.fromstring(xml).iter("interface") if i.get("name") == name)
    out = {}
    for p in iface.findall("property"):
        emits = {a.get("name"): a.get("value") for a in p.findall("annotation")}
        out[str(p.get("name"))] = (p.get("type"), p.get("access"),
                                   emits.get("org.freedesktop.DBus.Property.EmitsChangedSignal",
                                             "true") or "true")
    return out


def test_the_table_is_the_contract() -> None:
    written = xml_properties((DBUS_DIR / "org.overlayd.Overlayd1.Overlay.xml").read_text())
    assert written == {p.name: (p.signature, "read", p.changes) for p in PROPERTIES}


def test_introspection_is_made_from_the_table() -> None:
    iface = overlay(StubManager(Record())).introspect()
    xml = f"<node>{ET.tostring(iface.to_xml(), encoding='unicode')}</node>"
    assert xml_properties(xml) == {p.name: (p.signature, "read", p.changes) for p in PROPERTIES}
    assert overlay(StubManager(Record()), "other").introspect() is iface, "made once"


def test_getters_values_and_signalled_values_agree() -> None:
    rec = Record()
    manager = StubManager(rec)
    obj = overlay(manager)
    values = obj.property_values()
    assert manager.usage_reads == 1, "one statvfs for all the properties"
    assert manager.space_reads == 1, "one look at the image's space for all of them"
    assert values["ImageSize"].value == 1 << 30 and values["ImageFree"].value == 300 << 20
    assert set(values) == {p.name for p in PROPERTIES}
    for p in PROPERTIES:
        assert values[p.name].signature == p.signature
        assert getattr(obj, p.name) == values[p.name].value, p.name
    assert values["State"].value == "active" and values["MountOptions"].value == [
        "nosuid", "nodev"]
    assert values["UpperUsed"].value == 12288 and values["UpperInodesUsed"].value == 3
    signalled = signalled_values(manager, rec)  # type: ignore[arg-type]
    assert set(signalled) == {p.name for p in PROPERTIES if p.changes == SIGNALLED} \
        == {"State", "LoopDevice", "HalfCommitted", "LastError", "CommitAtShutdown",
            "UpperUsage", "UpperSize", "Layers", "StackDepth"}
    assert all(signalled[k] == values[k] for k in signalled)


def test_reading_a_const_property_reads_no_usage() -> None:
    manager = StubManager(Record())
    obj = overlay(manager)
    for p in PROPERTIES:
        if p.changes != LIVE:
            getattr(obj, p.name)
    assert manager.usage_reads == 0 and manager.space_reads == 0
    assert {p.changes for p in PROPERTIES} == {CONST, SIGNALLED, LIVE}


def test_an_overlay_gone_meanwhile() -> None:
    obj = overlay(StubManager(), "gone")
    with pytest.raises(NoSuchOverlay):
        _ = obj.State
    assert obj.property_values() == {}


def test_state_changes_are_what_is_signalled() -> None:
    manager = StubManager(Record())
    before = signalled_values(manager, Record())  # type: ignore[arg-type]
    after = signalled_values(manager, replace(Record(), state=OverlayState.COMMITTING))  # type: ignore[arg-type]
    assert {k for k in after if after[k] != before[k]} == {"State"}


def test_the_manager_names_what_it_returns() -> None:
    iface = ManagerInterface(StubService(StubManager())).introspect()  # type: ignore[arg-type]
    outs = {m.name: [a.name for a in m.out_args] for m in iface.methods}
    assert outs == {"Create": ["overlay"], "GetOverlay": ["overlay"],
                    "ListOverlays": ["overlays"], "Commit": [], "Discard": [],
                    "SetRootOverlayAtBoot": [], "StartCommit": ["job"],
                    "Squash": [], "Revert": [],
                    "Reconfigure": ["changed", "not_changed"]}


def test_the_manager_says_whether_the_root_is_on_an_overlay() -> None:
    manager = StubManager(Record())
    iface = ManagerInterface(StubService(manager))  # type: ignore[arg-type]
    version = Variant("s", overlayd.__version__)
    ram = {"MaxTotalSize": Variant("t", 4 << 30), "UpperSizeTotal": Variant("t", 64 << 20)}
    assert iface.property_values() == {"RootOverlay": Variant("o", "/"), "Version": version,
                                       **ram}
    manager.records["root"] = Record(name="root")
    ram["UpperSizeTotal"] = Variant("t", 128 << 20)  # the root's tmpfs counts too
    assert iface.property_values() == {
        "RootOverlay": Variant("o", "/org/overlayd/Overlayd1/overlay/root"), "Version": version,
        **ram}
    assert iface.Version == overlayd.__version__
    assert iface.RootOverlay == "/org/overlayd/Overlayd1/overlay/root"
    xml = ET.tostring(iface.introspect().to_xml(), encoding="unicode")
    assert xml_properties(f"<node>{xml}</node>", "org.overlayd.Overlayd1.Manager") == {
        "MaxTotalSize": ("t", "read", "true"), "RootOverlay": ("o", "read", "const"),
        "UpperSizeTotal": ("t", "read", "true"), "Version": ("s", "read", "const")}
    written = (DBUS_DIR / "org.overlayd.Overlayd1.Manager.xml").read_text()
    assert xml_properties(written, "org.overlayd.Overlayd1.Manager") == {
        "MaxTotalSize": ("t", "read", "true"), "RootOverlay": ("o", "read", "const"),
        "UpperSizeTotal": ("t", "read", "true"), "Version": ("s", "read", "const")}
