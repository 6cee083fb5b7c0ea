"""The objects on the bus: the Manager (with ObjectManager) and one Overlay per overlay.

Their methods hand over to the Service (service.py), which decodes, authorizes and calls
the OverlayManager. Each Overlay property is defined once, in ``PROPERTIES`` (a property
table, properties.py): the getters dbus-next serves, ``property_values`` (GetAll,
GetManagedObjects, InterfacesAdded), ``signalled_values`` (PropertiesChanged) and the
introspection all come from that table.

No ``from __future__ import annotations`` here: dbus-next reads the signature strings
('s', 'a{sv}') from the annotations.
"""

import functools
from typing import TYPE_CHECKING

from dbus_next import Variant
from dbus_next import introspection as intr
from dbus_next.constants import PropertyAccess
from dbus_next.service import dbus_property, method

from overlayd import __version__
from overlayd.bus.connection import CheapInterface
from overlayd.bus.names import MANAGER_IFACE, OVERLAY_IFACE, overlay_path
from overlayd.bus.properties import (
    CONST,
    LIVE,
    SIGNALLED,
    AnnotatedProperty,
    BusProperty,
    TableProperties,
    signalled,
    values,
    with_properties,
)
from overlayd.checks import reserved_total
from overlayd.errors import NoSuchOverlay
from overlayd.manager import OverlayManager
from overlayd.model import Overlay, UpperUsage

if TYPE_CHECKING:
    from overlayd.bus.service import Service


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

    @functools.cached_property
    def image_space(self) -> tuple[int, int]:
        return self.manager.image_space(self.rec.name)


OverlayProperty = BusProperty[Reading]

PROPERTIES: tuple[OverlayProperty, ...] = (
    OverlayProperty("CommitAtShutdown", "b", SIGNALLED,
                    lambda r: r.manager.commit_at_shutdown(r.rec.name)),
    OverlayProperty("CreatedUSec", "t", CONST, lambda r: r.rec.created_usec),
    OverlayProperty("Engine", "s", CONST, lambda r: str(r.rec.engine)),
    OverlayProperty("FsType", "s", CONST, lambda r: r.rec.fstype),
    OverlayProperty("HalfCommitted", "b", SIGNALLED, lambda r: r.rec.half_committed),
    OverlayProperty("Image", "s", CONST, lambda r: r.rec.image),
    OverlayProperty("ImageFree", "t", LIVE, lambda r: r.image_space[1]),
    OverlayProperty("ImageSize", "t", LIVE, lambda r: r.image_space[0]),
    OverlayProperty("LastError", "s", SIGNALLED, lambda r: r.rec.error),
    OverlayProperty("Layers", "as", SIGNALLED, lambda r: [la.path for la in r.rec.layers]),
    OverlayProperty("LoopDevice", "s", SIGNALLED, lambda r: r.rec.loop_device),
    OverlayProperty("MountOptions", "as", CONST, lambda r: list(r.rec.mount_options)),
    OverlayProperty("MountPoint", "s", CONST, lambda r: r.rec.mountpoint),
    OverlayProperty("Name", "s", CONST, lambda r: r.rec.name),
    OverlayProperty("OwnerUID", "u", CONST, lambda r: r.rec.owner_uid),
    OverlayProperty("Partition", "s", CONST, lambda r: r.rec.partition),
    OverlayProperty("PartitionOffset", "t", CONST, lambda r: r.rec.partition_offset),
    OverlayProperty("PartitionSize", "t", CONST, lambda r: r.rec.partition_size),
    OverlayProperty("StackDepth", "u", SIGNALLED, lambda r: len(r.rec.layers) + 1),
    OverlayProperty("State", "s", SIGNALLED, lambda r: str(r.rec.state)),
    OverlayProperty("UpperCompressedSize", "t", LIVE, lambda r: r.usage.compressed),
    OverlayProperty("UpperInodesUsed", "t", LIVE, lambda r: r.usage.inodes_used),
    OverlayProperty("UpperKind", "s", CONST, lambda r: str(r.rec.upper.kind)),
    OverlayProperty("UpperOriginalSize", "t", LIVE, lambda r: r.usage.original),
    OverlayProperty("UpperSize", "t", SIGNALLED, lambda r: r.rec.size),
    OverlayProperty("UpperUsage", "s", SIGNALLED, lambda r: r.level),
    OverlayProperty("UpperUsed", "t", LIVE, lambda r: r.usage.used),
)
SIGNALLED_PROPERTIES = signalled(PROPERTIES)
# The Manager's properties: the root overlay's object when / is on an overlay, else "/";
# the RAM the overlays reserve and max_total_size in bytes; the daemon's version.
# MaxTotalSize follows a reload of overlayd.conf (SIGHUP), so it is announced, not const.
MANAGER_MAX_TOTAL_SIZE = OverlayProperty("MaxTotalSize", "t", SIGNALLED, lambda r: None)
MANAGER_ROOT_OVERLAY = OverlayProperty("RootOverlay", "o", CONST, lambda r: None)
MANAGER_UPPER_SIZE_TOTAL = OverlayProperty("UpperSizeTotal", "t", SIGNALLED, lambda r: None)
MANAGER_VERSION = OverlayProperty("Version", "s", CONST, lambda r: None)


def property_values(reading: Reading) -> dict[str, Variant]:
    return values(PROPERTIES, reading)


def signalled_values(manager: OverlayManager, rec: Overlay, level: str = "ok"
                     ) -> dict[str, Variant]:
    return values(SIGNALLED_PROPERTIES, Reading(manager, rec, level))


# dbus-next leaves return values unnamed; the contract (dbus/*.xml) names them.
OUT_NAMES: dict[str, tuple[str, ...]] = {
    "Create": ("overlay",), "GetOverlay": ("overlay",), "ListOverlays": ("overlays",),
    "Diff": ("changes",), "StartCommit": ("job",), "Reconfigure": ("changed", "not_changed")}


def name_out_args(iface: intr.Interface) -> intr.Interface:
    for m in iface.methods:
        names = OUT_NAMES.get(m.name, ())
        for i, arg in enumerate(m.out_args):
            arg.name = arg.name or (names[i] if i < len(names) else None)
    return iface


class ManagerInterface(CheapInterface):
    def __init__(self, svc: "Service") -> None:
        super().__init__(MANAGER_IFACE)
        self.svc = svc

    def describe(self, iface: intr.Interface) -> intr.Interface:
        # fixed for the daemon's life: the root overlay is adopted at start or never
        iface.properties = [AnnotatedProperty(MANAGER_MAX_TOTAL_SIZE),
                            AnnotatedProperty(MANAGER_ROOT_OVERLAY),
                            AnnotatedProperty(MANAGER_UPPER_SIZE_TOTAL),
                            AnnotatedProperty(MANAGER_VERSION)]
        return name_out_args(iface)

    def root_overlay(self) -> str:
        rec = self.svc.manager.root_overlay()
        return overlay_path(rec.name) if rec is not None else "/"

    def upper_size_total(self) -> int:
        return reserved_total(self.svc.manager.list())

    def property_values(self) -> dict[str, Variant]:
        return {"MaxTotalSize": Variant("t", self.svc.manager.total_limit()),
                "RootOverlay": Variant("o", self.root_overlay()),
                "UpperSizeTotal": Variant("t", self.upper_size_total()),
                "Version": Variant("s", __version__)}

    @dbus_property(access=PropertyAccess.READ)
    def MaxTotalSize(self) -> "t":
        return self.svc.manager.total_limit()

    @dbus_property(access=PropertyAccess.READ)
    def RootOverlay(self) -> "o":
        return self.root_overlay()

    @dbus_property(access=PropertyAccess.READ)
    def UpperSizeTotal(self) -> "t":
        return self.upper_size_total()

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
    async def Reconfigure(self, name: "s", spec: "a{sv}", options: "a{sv}") -> "asa{ss}":
        return await self.svc.reconfigure(name, spec, options)

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


@with_properties(PROPERTIES, lambda self: self.reading())
class OverlayInterface(TableProperties, CheapInterface):
    property_table = PROPERTIES

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

    def property_source(self) -> Reading | None:
        """For every property at once (GetAll, InterfacesAdded, GetManagedObjects): one
        statvfs, no callback chain (the getters are synchronous)."""
        try:
            return self.reading()
        except NoSuchOverlay:
            return None

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
    async def Reconfigure(self, spec: "a{sv}", options: "a{sv}") -> "asa{ss}":
        return await self.svc.reconfigure(self.overlay, spec, options)

    @method()
    async def Diff(self) -> "a(ss)":
        return await self.svc.diff(self.overlay)
