"""The objects on the bus: the Manager (with ObjectManager) and one Overlay per overlay.

Each method: decode the arguments, validate them (cheap, InvalidArgs), look the overlay
up, identify the caller and authorize (before anything changes), then hand over to the
OverlayManager. Errors become D-Bus errors in ``connection.OverlaydBus._reply``; the
interfaces are written down in dbus/*.xml and a test holds them to it.

No ``from __future__ import annotations`` here: dbus-next reads the signature strings
('s', 'a{sv}') from the annotations.
"""

import logging
from typing import Any
from xml.etree import ElementTree as ET

from dbus_next import Variant
from dbus_next import introspection as intr
from dbus_next.aio import MessageBus
from dbus_next.constants import PropertyAccess
from dbus_next.service import ServiceInterface, dbus_property, method

from overlayd.bus.auth import Authorizer, Caller, CallerCache
from overlayd.bus.connection import current_message
from overlayd.bus.errors import AccessDenied, InvalidArgs
from overlayd.bus.names import (
    ACTION_COMMIT,
    ACTION_CREATE,
    ACTION_DISCARD,
    ACTION_MANAGE_OTHERS,
    MANAGER_IFACE,
    OVERLAY_IFACE,
    ROOT_PATH,
    overlay_path,
)
from overlayd.errors import InvalidSpec, OverlaydError
from overlayd.events import NOTICE, Event
from overlayd.manager import OverlayManager
from overlayd.model import Overlay, OverlaySpec, UpperUsage, parse_spec

log = logging.getLogger("overlayd.bus")

# Variant types accepted for each spec key ('size' may also be a string like "1G").
SPEC_TYPES: dict[str, tuple[str, ...]] = {
    "image": ("s",), "image_fd": ("h",), "fstype": ("s",), "mountpoint": ("s",),
    "size": ("t", "u", "x", "i", "s"), "mount_options": ("as",),
}
COMMIT_OPTIONS: dict[str, str] = {}
DISCARD_OPTIONS = {"force": "b"}


def decode_options(options: dict[str, Variant], allowed: dict[str, str],
                   what: str) -> dict[str, Any]:
    out = {}
    for key, variant in options.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidArgs(f"Unknown {what} option '{key[:64]}'; known options: {known}.")
        if variant.signature != allowed[key]:
            raise InvalidArgs(f"The {what} option '{key}' must be of type "
                              f"'{allowed[key]}', not '{variant.signature}'.")
        out[key] = variant.value
    return out


def decode_spec(name: str, spec: dict[str, Variant]) -> OverlaySpec:
    data: dict[str, Any] = {"name": name}
    for key, variant in spec.items():
        if key == "name":
            raise InvalidArgs("The name is Create's first argument, not a key of the spec.")
        types = SPEC_TYPES.get(key)
        if types is None:
            known = ", ".join(SPEC_TYPES)
            raise InvalidArgs(f"Unknown spec key '{key[:64]}'; the known keys are {known}.")
        if variant.signature not in types:
            raise InvalidArgs(f"The spec key '{key}' must be of type '{types[0]}', "
                              f"not '{variant.signature}'.")
        if key == "image_fd" and variant.value is None:
            raise InvalidArgs("The spec key 'image_fd' names no file descriptor that came "
                              "with the call.")
        data[key] = variant.value
    try:
        return parse_spec(data)
    except InvalidSpec as e:
        raise InvalidArgs(str(e)) from None


class Service:
    """Keeps the bus objects in step with the OverlayManager."""

    def __init__(self, bus: MessageBus, manager: OverlayManager, auth: Authorizer) -> None:
        self.bus = bus
        self.manager = manager
        self.auth = auth
        self.manager_iface = ManagerInterface(self)
        self.objects: dict[str, OverlayInterface] = {}
        self.callers = CallerCache()
        manager.subscribe(self._on_change)

    def export_all(self) -> None:
        self.bus.export(ROOT_PATH, self.manager_iface)
        for rec in self.manager.list():
            self._on_change(rec.name, rec)

    def _on_change(self, name: str, rec: Overlay | None) -> None:
        obj = self.objects.get(name)
        if rec is None:
            if obj is not None:
                del self.objects[name]
                self.bus.unexport(overlay_path(name), obj)
            return
        if obj is None:
            obj = self.objects[name] = OverlayInterface(self, name)
            obj.last = obj.snapshot()
            self.bus.export(overlay_path(name), obj)
            return
        now = obj.snapshot()
        changed = {k: v for k, v in now.items() if obj.last.get(k) != v}
        obj.last = now
        if changed:
            obj.emit_properties_changed(changed)

    async def caller(self) -> Caller:
        return await self.callers.identify(self.bus, current_message.get())

    async def authorize(self, action: str, rec_or_name: Overlay | str, caller: Caller) -> None:
        if isinstance(rec_or_name, Overlay):
            rec = rec_or_name
            details = {"overlay": rec.name, "image": rec.image, "mountpoint": rec.mountpoint}
            if rec.owner_uid != caller.uid:
                await self.require(ACTION_MANAGE_OTHERS, caller, details)
        else:
            details = {"overlay": rec_or_name}
        await self.require(action, caller, details)

    async def require(self, action: str, caller: Caller, details: dict[str, str]) -> None:
        """AUTH.require, with each refusal in the journal as a 'denied' event."""
        try:
            await self.auth.require(action, caller, details)
        except AccessDenied as e:
            log.log(NOTICE, "Denied %s to uid %d: %s", action, caller.uid, e, extra={
                "OVERLAYD_EVENT": Event.DENIED, "OVERLAYD_ACTION": action,
                "OVERLAYD_UID": caller.uid, "OVERLAYD_NAME": details.get("overlay"),
                "OVERLAYD_IMAGE": details.get("image"),
                "OVERLAYD_MOUNTPOINT": details.get("mountpoint")})
            raise

    # -- the operations, shared by the Manager and the Overlay objects -------------------

    async def create(self, name: str, spec: dict[str, Variant]) -> str:
        parsed = decode_spec(name, spec)
        caller = await self.caller()
        image = parsed.image or self.manager.fd_path(parsed.image_fd or -1)
        details = {"overlay": parsed.name, "image": image,
                   "mountpoint": parsed.mountpoint or ""}
        await self.require(ACTION_CREATE, caller, details)
        await self.manager.create(parsed, owner_uid=caller.uid)
        return overlay_path(parsed.name)

    async def commit(self, name: str, options: dict[str, Variant]) -> None:
        decode_options(options, COMMIT_OPTIONS, "Commit")
        rec = self.manager.get(name)
        caller = await self.caller()
        await self.authorize(ACTION_COMMIT, rec, caller)
        await self.manager.commit(name, caller_uid=caller.uid, created_usec=rec.created_usec)

    async def discard(self, name: str, options: dict[str, Variant]) -> None:
        opts = decode_options(options, DISCARD_OPTIONS, "Discard")
        rec = self.manager.get(name)
        caller = await self.caller()
        await self.authorize(ACTION_DISCARD, rec, caller)
        await self.manager.discard(name, force=bool(opts.get("force", False)),
                                   caller_uid=caller.uid, created_usec=rec.created_usec)

    async def diff(self, name: str) -> list[list[str]]:
        rec = self.manager.get(name)
        caller = await self.caller()
        if caller.uid != rec.owner_uid:  # one's own overlay needs no action
            await self.require(ACTION_MANAGE_OTHERS, caller, {"overlay": rec.name})
        return [[d.path, d.kind] for d in await self.manager.diff(name, rec.created_usec)]


# dbus-next leaves return values unnamed; the contract (dbus/*.xml) names them.
OUT_NAMES = {"Create": "overlay", "GetOverlay": "overlay", "ListOverlays": "overlays",
             "Diff": "changes"}


def name_out_args(iface: intr.Interface) -> intr.Interface:
    for m in iface.methods:
        for arg in m.out_args:
            arg.name = arg.name or OUT_NAMES.get(m.name)
    return iface


class ManagerInterface(ServiceInterface):  # type: ignore[misc]
    def introspect(self) -> intr.Interface:
        return name_out_args(super().introspect())

    def __init__(self, svc: Service) -> None:
        super().__init__(MANAGER_IFACE)
        self.svc = svc

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
    async def GetOverlay(self, name: "s") -> "o":
        return overlay_path(self.svc.manager.get(name).name)

    @method()
    async def ListOverlays(self) -> "a(so)":
        return [[r.name, overlay_path(r.name)] for r in self.svc.manager.list()]


EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"
# Properties that never change once the overlay exists, and those read live on every Get
# (they change with every write in the overlay) and so are never signalled.
CONST_PROPERTIES = {"Name", "MountPoint", "Image", "FsType", "UpperSize", "OwnerUID",
                    "CreatedUSec", "MountOptions"}
LIVE_PROPERTIES = {"UpperUsed", "UpperInodesUsed"}


class _AnnotatedProperty(intr.Property):  # type: ignore[misc]
    emits = "true"

    def to_xml(self) -> ET.Element:
        element: ET.Element = super().to_xml()
        ET.SubElement(element, "annotation", name=EMITS, value=self.emits)
        return element


class OverlayInterface(ServiceInterface):  # type: ignore[misc]
    def introspect(self) -> intr.Interface:
        """dbus-next cannot annotate properties; say which ones are signalled."""
        iface = name_out_args(super().introspect())
        for prop in iface.properties:
            if prop.name in CONST_PROPERTIES | LIVE_PROPERTIES:
                prop.__class__ = _AnnotatedProperty
                prop.emits = "const" if prop.name in CONST_PROPERTIES else "false"
        return iface

    def __init__(self, svc: Service, name: str) -> None:
        super().__init__(OVERLAY_IFACE)
        self.svc = svc
        self.overlay = name  # not .name: ServiceInterface keeps the interface name there
        self.last: dict[str, Any] = {}

    def _rec(self) -> Overlay | None:
        try:
            return self.svc.manager.get(self.overlay)
        except OverlaydError:  # gone between the call and the read
            return None

    def _usage(self) -> UpperUsage:
        rec = self._rec()
        if rec is None:
            return UpperUsage(size=0, used=0, inodes_used=0)
        return self.svc.manager.usage_now(rec.name)

    def property_values(self) -> dict[str, Variant]:
        """Every property at once, for InterfacesAdded and GetManagedObjects: one statvfs,
        no callback chain (the getters are synchronous)."""
        rec = self._rec()
        usage = self._usage()
        if rec is None:
            return {}
        return {
            "CreatedUSec": Variant("t", rec.created_usec), "FsType": Variant("s", rec.fstype),
            "Image": Variant("s", rec.image), "LoopDevice": Variant("s", rec.loop_device),
            "MountOptions": Variant("as", list(rec.mount_options)),
            "MountPoint": Variant("s", rec.mountpoint), "Name": Variant("s", rec.name),
            "OwnerUID": Variant("u", rec.owner_uid), "State": Variant("s", rec.state.value),
            "UpperInodesUsed": Variant("t", usage.inodes_used),
            "UpperSize": Variant("t", rec.size), "UpperUsed": Variant("t", usage.used),
        }

    def snapshot(self) -> dict[str, Any]:
        """The properties that change and are announced with PropertiesChanged."""
        rec = self._rec()
        if rec is None:
            return {}
        return {"State": rec.state.value, "LoopDevice": rec.loop_device}

    @method()
    async def Commit(self, options: "a{sv}"):
        await self.svc.commit(self.overlay, options)

    @method()
    async def Discard(self, options: "a{sv}"):
        await self.svc.discard(self.overlay, options)

    @method()
    async def Diff(self) -> "a(ss)":
        return await self.svc.diff(self.overlay)

    def _get(self, attr: str, default: Any) -> Any:
        rec = self._rec()
        return default if rec is None else getattr(rec, attr)

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.overlay

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return str(self._get("state", "failed"))

    @dbus_property(access=PropertyAccess.READ)
    def MountPoint(self) -> "s":
        return str(self._get("mountpoint", ""))

    @dbus_property(access=PropertyAccess.READ)
    def Image(self) -> "s":
        return str(self._get("image", ""))

    @dbus_property(access=PropertyAccess.READ)
    def FsType(self) -> "s":
        return str(self._get("fstype", ""))

    @dbus_property(access=PropertyAccess.READ)
    def LoopDevice(self) -> "s":
        return str(self._get("loop_device", ""))

    @dbus_property(access=PropertyAccess.READ)
    def UpperSize(self) -> "t":
        return int(self._get("size", 0))

    @dbus_property(access=PropertyAccess.READ)
    def UpperUsed(self) -> "t":
        return self._usage().used

    @dbus_property(access=PropertyAccess.READ)
    def UpperInodesUsed(self) -> "t":
        return self._usage().inodes_used

    @dbus_property(access=PropertyAccess.READ)
    def OwnerUID(self) -> "u":
        return int(self._get("owner_uid", 0))

    @dbus_property(access=PropertyAccess.READ)
    def CreatedUSec(self) -> "t":
        return int(self._get("created_usec", 0))

    @dbus_property(access=PropertyAccess.READ)
    def MountOptions(self) -> "as":
        return list(self._get("mount_options", ()))
