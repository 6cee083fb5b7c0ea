"""The client side of org.overlayd.Overlayd1, for overlayctl: plain Python in and out."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.constants import BusType

from overlayd.bus.errors import BY_NAME
from overlayd.bus.names import (
    BUS_NAME,
    DBUS_ERROR_PREFIX,
    JOB_IFACE,
    JOB_PREFIX,
    MANAGER_IFACE,
    OVERLAY_IFACE,
    ROOT_PATH,
    job_path,
)

CONNECT = "Connect"  # the name of a ClientError for a bus that cannot be reached
# What the bus daemon answers when overlayd is not there or does not answer.
UNREACHABLE = {CONNECT, DBUS_ERROR_PREFIX + "ServiceUnknown", DBUS_ERROR_PREFIX + "NoReply"}


class ClientError(Exception):
    """An error reply: ``name`` is the D-Bus error name, str() its message, ``error`` the
    class of overlayd's error table it names (None for an error that is not overlayd's)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.error = BY_NAME.get(name)

    def is_a(self, cls: type[Exception]) -> bool:
        return self.error is not None and issubclass(self.error, cls)

    @property
    def unreachable(self) -> bool:
        return self.name in UNREACHABLE


def _spec_variants(spec: dict[str, Any]) -> tuple[dict[str, Variant], list[int]]:
    out: dict[str, Variant] = {}
    fds: list[int] = []
    for key, value in spec.items():
        if key == "image_fd":
            fds.append(value)
            out[key] = Variant("h", len(fds) - 1)
        elif key == "size":
            out[key] = Variant("t", value)
        elif key in ("mount_options", "layers"):
            out[key] = Variant("as", list(value))
        else:
            out[key] = Variant("s", value)
    return out, fds


# (object path, interface, member, body with every Variant unwrapped)
SignalHandler = Callable[[str, str, str, list[Any]], None]
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"


def unwrap(value: Any) -> Any:
    """VALUE with every Variant in it replaced by its value."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


class OverlaydClient:
    def __init__(self, bus: MessageBus, interactive: bool) -> None:
        self.bus = bus
        self.interactive = interactive

    @classmethod
    async def connect(cls, *, interactive: bool = True,
                      address: str | None = None) -> OverlaydClient:
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM, bus_address=address,
                                   negotiate_unix_fd=True).connect()
        except Exception as e:  # dbus-next raises several types for one cause
            where = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "the system bus")
            raise ClientError(CONNECT, f"Cannot connect to {where}: {e}") from None
        return cls(bus, interactive)

    def close(self) -> None:
        self.bus.disconnect()

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, fds: list[int] | None = None) -> list[Any]:
        flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if self.interactive \
            else MessageFlag.NONE
        reply = await self.bus.call(Message(
            destination=BUS_NAME, path=path, interface=interface, member=member,
            signature=signature, body=body or [], unix_fds=fds or [], flags=flags))
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise ClientError(reply.error_name or "", text or reply.error_name or "error")
        return list(reply.body)

    async def _manager(self, member: str, signature: str = "", body: list[Any] | None = None,
                       fds: list[int] | None = None) -> list[Any]:
        return await self.call(ROOT_PATH, MANAGER_IFACE, member, signature, body, fds)

    async def overlays(self) -> list[tuple[str, str]]:
        (items,) = await self._manager("ListOverlays")
        return [(n, p) for n, p in items]

    async def path_of(self, name: str) -> str:
        (path,) = await self._manager("GetOverlay", "s", [name])
        return str(path)

    async def properties(self, path: str) -> dict[str, Any]:
        (props,) = await self.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                                   [OVERLAY_IFACE])
        return {k: v.value for k, v in props.items()}

    async def create(self, name: str, spec: dict[str, Any]) -> str:
        variants, fds = _spec_variants(spec)
        (path,) = await self._manager("Create", "sa{sv}", [name, variants], fds)
        return str(path)

    async def commit(self, name: str, *, at_shutdown: bool = False, target: str | None = None,
                     layer_format: str | None = None) -> None:
        options = {"at_shutdown": Variant("b", True)} if at_shutdown else {}
        if target is not None:
            options["target"] = Variant("s", target)
        if layer_format is not None:
            options["layer_format"] = Variant("s", layer_format)
        await self._manager("Commit", "sa{sv}", [name, options])

    async def reconfigure(self, name: str, spec: dict[str, Any]
                          ) -> tuple[list[str], dict[str, str]]:
        """Apply SPEC to the live overlay: (keys changed now, {key: why not} for the rest)."""
        variants, _fds = _spec_variants(spec)
        changed, not_changed = await self._manager("Reconfigure", "sa{sv}a{sv}",
                                                   [name, variants, {}])
        return list(changed), dict(not_changed)

    async def root_overlay(self) -> str:
        """The root overlay's object path, or "/" when the root is not on an overlay."""
        (value,) = await self.call(ROOT_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                                   [MANAGER_IFACE, "RootOverlay"])
        return str(value.value)

    async def set_root_at_boot(self, enabled: bool, size: str | None = None) -> None:
        options = {"size": Variant("s", size)} if size else {}
        await self._manager("SetRootOverlayAtBoot", "ba{sv}", [enabled, options])

    async def discard(self, name: str, *, force: bool = False) -> None:
        options = {"force": Variant("b", True)} if force else {}
        await self._manager("Discard", "sa{sv}", [name, options])

    async def diff(self, name: str) -> list[tuple[str, str]]:
        (changes,) = await self.call(await self.path_of(name), OVERLAY_IFACE, "Diff")
        return [(p, k) for p, k in changes]

    # -- jobs -----------------------------------------------------------------------------

    async def start_commit(self, name: str) -> str:
        (path,) = await self._manager("StartCommit", "sa{sv}", [name, {}])
        return str(path)

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job's properties, with ObjectPath and Id, by number."""
        (objects,) = await self.call(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
        out = []
        for path, ifaces in objects.items():
            if JOB_IFACE in ifaces and path.startswith(JOB_PREFIX):
                props = unwrap(ifaces[JOB_IFACE])
                out.append(props | {"ObjectPath": path, "Id": int(path[len(JOB_PREFIX):])})
        return sorted(out, key=lambda j: int(j["Id"]))

    async def cancel(self, job_id: int) -> None:
        await self.call(job_path(job_id), JOB_IFACE, "Cancel", "a{sv}", [{}])

    async def watch_jobs(self, handler: SignalHandler) -> None:
        """Call HANDLER with every signal about jobs from now on: InterfacesAdded and
        InterfacesRemoved (of the manager), PropertiesChanged and Completed (of jobs).
        The match rules are in place when this returns, so a job started after it is seen
        from its start."""
        def on_message(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.path is not None and \
                    (msg.path == ROOT_PATH or msg.path.startswith(JOB_PREFIX)):
                handler(msg.path, msg.interface or "", msg.member or "", unwrap(msg.body))

        self.bus.add_message_handler(on_message)
        for rule in (f"path='{ROOT_PATH}',interface='{OBJECT_MANAGER}'",
                     f"path_namespace='{JOB_PREFIX.rstrip('/')}'"):
            await self.call_bus("AddMatch", "s", [f"type='signal',sender='{BUS_NAME}',{rule}"])

    async def call_bus(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member=member, signature=signature, body=body))
        if reply.message_type is MessageType.ERROR:
            raise ClientError(reply.error_name or "", str(reply.body[0] if reply.body else ""))
        return list(reply.body)
