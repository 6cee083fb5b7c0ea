"""overlayctl's reading commands over the bus without dbus-next or asyncio (issue 15).

``overlayctl list`` spent most of its start-up importing asyncio and dbus-next (about
40 ms of the 100 here; importing any part of dbus-next imports its asyncio half) to make
two kinds of method calls. ``WireClient`` makes them with jeepney (Debian's
python3-jeepney, the D-Bus library of keyring and SecretStorage), whose blocking I/O
imports neither. It serves the commands that only read (list, status, jobs, layers,
diff); anything that waits for signals or sends an fd uses dbus-next
(``client.OverlaydClient``). Both share the reading methods (``ClientReads``), so the two
paths cannot answer differently.

Its methods are coroutines that never suspend, so the commands' code is the same for
both clients, and ``run_sync`` drives one to its end without an event loop.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import MessageFlag

from overlayd.bus.errors import BY_NAME
from overlayd.bus.names import (
    BUS_NAME,
    DBUS_ERROR_PREFIX,
    JOB_IFACE,
    JOB_PREFIX,
    MANAGER_IFACE,
    OVERLAY_IFACE,
    ROOT_PATH,
)

CONNECT = "Connect"  # the name of a ClientError for a bus that cannot be reached
# What the bus daemon answers when overlayd is not there or does not answer.
UNREACHABLE = {CONNECT, DBUS_ERROR_PREFIX + "ServiceUnknown", DBUS_ERROR_PREFIX + "NoReply"}
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
T = TypeVar("T")


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


def value_of(variant: Any) -> Any:
    """A variant's value: dbus-next's ``Variant`` or jeepney's (signature, value) pair.
    overlayd's properties hold no variant inside a variant."""
    return variant[1] if isinstance(variant, tuple) else variant.value


def unwrap(value: Any) -> Any:
    """VALUE with every dbus-next variant in it replaced by its value."""
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if hasattr(value, "signature") and hasattr(value, "value"):
        return unwrap(value.value)
    return value


class ClientReads:
    """The reading methods, over ``call`` (the subclass's)."""

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, fds: list[int] | None = None) -> list[Any]:
        raise NotImplementedError

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
        (props,) = await self.call(path, PROPERTIES, "GetAll", "s", [OVERLAY_IFACE])
        return {k: value_of(v) for k, v in props.items()}

    async def root_overlay(self) -> str:
        """The root overlay's object path, or "/" when the root is not on an overlay."""
        (value,) = await self.call(ROOT_PATH, PROPERTIES, "Get", "ss",
                                   [MANAGER_IFACE, "RootOverlay"])
        return str(value_of(value))

    async def diff(self, name: str) -> list[tuple[str, str]]:
        (changes,) = await self.call(await self.path_of(name), OVERLAY_IFACE, "Diff")
        return [(p, k) for p, k in changes]

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job's properties, with ObjectPath and Id, by number."""
        (objects,) = await self.call(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
        out = []
        for path, ifaces in objects.items():
            if JOB_IFACE in ifaces and path.startswith(JOB_PREFIX):
                props = {k: value_of(v) for k, v in ifaces[JOB_IFACE].items()}
                out.append(props | {"ObjectPath": path, "Id": int(path[len(JOB_PREFIX):])})
        return sorted(out, key=lambda j: int(j["Id"]))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run CORO, which never suspends (it calls only WireClient), to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a command on the wire client waited for something")


class WireClient(ClientReads):
    """A blocking connection to the system bus (jeepney's), for calls whose replies are
    all we need."""

    def __init__(self, connection: DBusConnection, interactive: bool) -> None:
        self.connection = connection
        self.interactive = interactive

    @classmethod
    def connect(cls, *, interactive: bool = True, address: str | None = None) -> WireClient:
        # jeepney's "SYSTEM" is DBUS_SYSTEM_BUS_ADDRESS, else the well-known socket.
        try:
            connection = open_dbus_connection(address or "SYSTEM", auth_timeout=25)
        except (OSError, ValueError, RuntimeError) as e:
            shown = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "the system bus")
            # jeepney parses an address with tuple unpacking: its ValueError for one that
            # is not "transport:key=value" reads "not enough values to unpack".
            why = "it is not a D-Bus address (unix:path=...)" if type(e) is ValueError \
                else e.strerror if isinstance(e, OSError) and e.strerror else e  # no [Errno 2]
            raise ClientError(CONNECT, f"Cannot connect to {shown}: {why}") from None
        return cls(connection, interactive)

    def close(self) -> None:
        self.connection.close()

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, fds: list[int] | None = None) -> list[Any]:
        if fds:
            raise ValueError("the wire client passes no file descriptors")
        msg = new_method_call(DBusAddress(path, BUS_NAME, interface), member,
                              signature or None, tuple(body or ()))
        if self.interactive:  # a call may then wait for polkit's agent: no timeout
            msg.header.flags |= MessageFlag.allow_interactive_authorization
        try:
            reply = self.connection.send_and_get_reply(msg, timeout=None if self.interactive
                                                       else 25)
        except (OSError, TimeoutError) as e:
            raise ClientError(DBUS_ERROR_PREFIX + "NoReply", f"No reply from the bus: {e}") \
                from None
        if reply.header.message_type is MessageType.error:
            name = str(reply.header.fields.get(HeaderFields.error_name, ""))
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise ClientError(name, text or name or "error")
        return list(reply.body)
