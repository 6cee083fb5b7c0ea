"""The objects on the bus: the Manager (with ObjectManager) and one Overlay per overlay.

Their methods hand over to the Service (service.py), which decodes, authorizes and calls
the OverlayManager. Each Overlay property is defined once, in ``PROPERTIES``: the getters
dbus-next serves, ``property_values`` (GetAll, GetManagedObjects, InterfacesAdded),
``signalled_values`` (PropertiesChanged) and the introspection all come from that table.

No ``from __future__ import annotations`` here: dbus-next reads the signature strings
('s', 'a{sv}') from the annotations.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from xml.etree import ElementTree as ET

from dbus_next import Variant
from dbus_next import introspection as intr
from dbus_next.constants import PropertyAccess
from dbus_next.service import dbus_property, method

from overlayd import __version__
from overlayd.bus.connection import CheapInterface
from overlayd.bus.names import MANAGER_IFACE, OVERLAY_IFACE, overlay_path
from overlayd.errors import NoSuchOverlay
from overlayd.manager import OverlayManager
from overlayd.model import Overlay, UpperUsage

if TYPE_CHECKING:
    from overlayd.bus.service import Service

# How a property changes: the values of org.freedesktop.DBus.Property.EmitsChangedSignal.
CONST = "const"  # never, once the overlay exists
SIGNALLED = "true"  # announced with PropertiesChanged
LIVE = "false"  # with every write in the overlay: read live on every Get, never announced
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"


class Reading:
    """One read of an overlay's properties: its record, the upper's usage if a property
    asks for it (a statvfs, done at most once), and its UpperUsage level as last seen by
    the periodic look (bus/usage.py)."""

    def __init__(self, manager: OverlayManager, rec: Overlay, level: str = "ok") -> None:
        self.manager = manager
        self.rec = rec
        self.level = level

    @functools.cached_property
    def usage(self) -> UpperUsage:
        return self.manager.usage_now(self.rec.name)


@dataclass(frozen=True)
class OverlayProperty:
    name: str
    signature: str
    changes: str  # CONST, SIGNALLED or LIVE
    read: Callable[[Reading], Any]


PROPERTIES: tuple[OverlayProperty, ...] = (
    OverlayProperty("CommitAtShutdown", "b", SIGNALLED,
                    lambda r: r.manager.commit_at_shutdown(r.rec.name)),
    OverlayProperty("CreatedUSec", "t", CONST, lambda r: r.rec.created_usec),
    OverlayProperty("Engine", "s", CONST, lambda r: str(r.rec.engine)),
    OverlayProperty("FsType", "s", CONST, lambda r: r.rec.fstype),
    OverlayProperty("HalfCommitted", "b", SIGNALLED, lambda r: r.rec.half_committed),
    OverlayProperty("Image", "s", CONST, lambda r: r.rec.image),
    OverlayProperty("LastError", "s", SIGNALLED, lambda r: r.rec.error),
    OverlayProperty("Layers", "as", SIGNALLED, lambda r: [la.path for la in r.rec.layers]),
    OverlayProperty("LoopDevice", "s", SIGNALLED, lambda r: r.rec.loop_device),
    OverlayProperty("MountOptions", "as", CONST, lambda r: list(r.rec.mount_options)),
    OverlayProperty("MountPoint", "s", CONST, lambda r: r.rec.mountpoint),
    OverlayProperty("Name", "s", CONST, lambda r: r.rec.name),
    OverlayProperty("OwnerUID", "u", CONST, lambda r: r.rec.owner_uid),
    OverlayProperty("StackDepth", "u", SIGNALLED, lambda r: len(r.rec.layers) + 1),
    OverlayProperty("State", "s", SIGNALLED, lambda r: str(r.rec.state)),
    OverlayProperty("UpperCompressedSize", "t", LIVE, lambda r: r.usage.compressed),
    OverlayProperty("UpperInodesUsed", "t", LIVE, lambda r: r.usage.inodes_used),
    OverlayProperty("UpperKind", "s", CONST, lambda r: str(r.rec.upper.kind)),
    OverlayProperty("UpperOriginalSize", "t", LIVE, lambda r: r.usage.original),
    OverlayProperty("UpperSize", "t", CONST, lambda r: r.rec.size),
    OverlayProperty("UpperUsage", "s", SIGNALLED, lambda r: r.level),
    OverlayProperty("UpperUsed", "t", LIVE, lambda r: r.usage.used),
)
SIGNALLED_PROPERTIES = tuple(p for p in PROPERTIES if p.changes == SIGNALLED)
# The Manager's one property: the root overlay's object when / is on an overlay, else "/".
MANAGER_ROOT_OVERLAY = OverlayProperty("RootOverlay", "o", CONST, lambda r: None)
MANAGER_VERSION = OverlayProperty("Version", "s", CONST, lambda r: None)


def property_values(reading: Reading) -> dict[str, Variant]:
    return {p.name: Variant(p.signature, p.read(reading)) for p in PROPERTIES}


def signalled_values(manager: OverlayManager, rec: Overlay, level: str = "ok"
                     ) -> dict[str, Variant]:
    reading = Reading(manager, rec, level)
    return {p.name: Variant(p.signature, p.read(reading)) for p in SIGNALLED_PROPERTIES}


# dbus-next leaves return values unnamed; the contract (dbus/*.xml) names them.
OUT_NAMES = {"Create": "overlay", "GetOverlay": "overlay", "ListOverlays": "overlays",
             "Diff": "changes", "StartCommit": "job"}


def name_out_args(iface: intr.Interface) -> intr.Interface:
    for m in iface.methods:
        for arg in m.out_args:
            arg.name = arg.name or OUT_NAMES.get(m.name)
    return iface


class Described(Protocol):
    """What the introspection needs of a property-table entry (Overlay's or Job's)."""

    @property
    def name(self) -> str: ...
    @property
    def signature(self) -> str: ...
    @property
    def changes(self) -> str: ...


class AnnotatedProperty(intr.Property):  # type: ignore[misc]
    """A read-only property that says how it changes (dbus-next cannot annotate them)."""

    def __init__(self, prop: Described) -> None:
        super().__init__(prop.name, prop.signature, PropertyAccess.READ)
        self.changes = prop.changes

    def to_xml(self) -> ET.Element:
        element: ET.Element = super().to_xml()
        if self.changes != SIGNALLED:  # "true" is what a property without it means
            ET.SubElement(element, "annotation", name=EMITS, value=self.changes)
        return element


class ManagerInterface(CheapInterface):
    def __init__(self, svc: "Service") -> None:
        super().__init__(MANAGER_IFACE)
        self.svc = svc

    def describe(self, iface: intr.Interface) -> intr.Interface:
        # fixed for the daemon's life: the root overlay is adopted at start or never
        iface.properties = [AnnotatedProperty(MANAGER_ROOT_OVERLAY),
                            AnnotatedProperty(MANAGER_VERSION)]
        return name_out_args(iface)

    def root_overlay(self) -> str:
        rec = self.svc.manager.root_overlay()
        return overlay_path(rec.name) if rec is not None else "/"

    def property_values(self) -> dict[str, Variant]:
        return {"RootOverlay": Variant("o", self.root_overlay()),
                "Version": Variant("s", __version__)}

    @dbus_property(access=PropertyAccess.READ)
    def RootOverlay(self) -> "o":
        return self.root_overlay()

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return __version__

    @method()
    async def Create(self, name: "s", spec: "a{sv}") -> "o":
        return await self.svc.create(name, spec)

    @method()
    async def Commit(self, name: "s", options: "a{sv}"):
        await self.svc.commit(name, options)

    @method()
    async def Discard(self, name: "s", options: "a{sv}"):
        await self.svc.discard(name, options)

    @method()
    async def Squash(self, name: "s", options: "a{sv}"):
        await self.svc.squash(name, options)

    @method()
    async def Revert(self, name: "s", options: "a{sv}"):
        await self.svc.revert(name, options)

    @method()
    async def SetRootOverlayAtBoot(self, enabled: "b", options: "a{sv}"):
        await self.svc.set_root_at_boot(enabled, options)

    @method()
    async def StartCommit(self, name: "s", options: "a{sv}") -> "o":
        return await self.svc.start_commit(name, options)

    @method()
    async def GetOverlay(self, name: "s") -> "o":
        return overlay_path(self.svc.lookup(name).name)

    @method()
    async def ListOverlays(self) -> "a(so)":
        return [[r.name, overlay_path(r.name)] for r in self.svc.manager.list()]


def _getter(prop: OverlayProperty) -> Any:
    """PROP as dbus-next wants a property: a getter of self alone, named after it, with the
    D-Bus type as its return annotation."""
    def get(self: "OverlayInterface") -> Any:
        return prop.read(self.reading())

    get.__name__ = get.__qualname__ = prop.name  # dbus-next calls it by this name
    get.__annotations__ = {"return": prop.signature}
    return dbus_property(access=PropertyAccess.READ, name=prop.name)(get)


def _with_properties(cls: type) -> type:
    """CLS with a getter for each entry of PROPERTIES."""
    for prop in PROPERTIES:
        setattr(cls, prop.name, _getter(prop))
    return cls


@_with_properties
class OverlayInterface(CheapInterface):
    def __init__(self, svc: "Service", name: str) -> None:
        super().__init__(OVERLAY_IFACE)
        self.svc = svc
        self.overlay = name  # not .name: ServiceInterface keeps the interface name there
        self.announced: dict[str, Variant] = {}  # the signalled values last announced

    def describe(self, iface: intr.Interface) -> intr.Interface:
        iface.properties = [AnnotatedProperty(p) for p in PROPERTIES]
        return name_out_args(iface)

    def reading(self) -> Reading:
        """NoSuchOverlay if it went between the call and the read."""
        return Reading(self.svc.manager, self.svc.manager.get(self.overlay),
                       self.svc.usage.level(self.overlay))

    def property_values(self) -> dict[str, Variant]:
        """Every property at once, for GetAll, InterfacesAdded and GetManagedObjects: one
        statvfs, no callback chain (the getters are synchronous). Empty if the overlay
        went meanwhile, so that one object cannot fail a GetManagedObjects of all."""
        try:
            return property_values(self.reading())
        except NoSuchOverlay:
            return {}

    @method()
    async def Commit(self, options: "a{sv}"):
        await self.svc.commit(self.overlay, options)

    @method()
    async def Discard(self, options: "a{sv}"):
        await self.svc.discard(self.overlay, options)

    @method()
    async def StartCommit(self, options: "a{sv}") -> "o":
        return await self.svc.start_commit(self.overlay, options)

    @method()
    async def Diff(self) -> "a(ss)":
        return await self.svc.diff(self.overlay)
