"""The client side of org.overlayd.Overlayd1, for overlayctl: plain Python in and out."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.constants import BusType

from overlayd.bus.names import BUS_NAME, JOB_IFACE, JOB_PREFIX, ROOT_PATH, job_path
from overlayd.bus.wire import CONNECT as CONNECT
from overlayd.bus.wire import OBJECT_MANAGER, ClientReads
from overlayd.bus.wire import UNREACHABLE as UNREACHABLE
from overlayd.bus.wire import ClientError as ClientError
from overlayd.bus.wire import unwrap as unwrap


def _spec_variants(spec: dict[str, Any]) -> tuple[dict[str, Variant], list[int]]:
    out: dict[str, Variant] = {}
    fds: list[int] = []
    for key, value in spec.items():
        if key == "image_fd":
            fds.append(value)
            out[key] = Variant("h", len(fds) - 1)
        elif key == "size" or (key == "partition" and isinstance(value, int)):
            out[key] = Variant("t" if key == "size" else "u", value)
        elif key in ("mount_options", "layers"):
            out[key] = Variant("as", list(value))
        else:
            out[key] = Variant("s", value)
    return out, fds


# (object path, interface, member, body with every Variant unwrapped)
SignalHandler = Callable[[str, str, str, list[Any]], None]


class OverlaydClient(ClientReads):
    """The whole client, on dbus-next: calls that send fds, and signals (jobs)."""

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
            why = e.strerror if isinstance(e, OSError) and e.strerror else e  # no [Errno 2]
            raise ClientError(CONNECT, f"Cannot connect to {where}: {why}") from None
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

    async def set_root_at_boot(self, enabled: bool, size: str | None = None) -> None:
        options = {"size": Variant("s", size)} if size else {}
        await self._manager("SetRootOverlayAtBoot", "ba{sv}", [enabled, options])

    async def discard(self, name: str, *, force: bool = False) -> None:
        options = {"force": Variant("b", True)} if force else {}
        await self._manager("Discard", "sa{sv}", [name, options])

    async def start_commit(self, name: str) -> str:
        (path,) = await self._manager("StartCommit", "sa{sv}", [name, {}])
        return str(path)

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
