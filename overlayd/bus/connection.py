"""OverlaydBus: dbus-next's MessageBus with its rough edges filed off, in one place.

dbus-next 0.2.3 (pinned in pyproject.toml) has habits a system service cannot keep:

1. a method is not told who called it: here the calling ``Message`` is put in the
   ``current_message`` ContextVar before the method's task starts;
2. an exception is sent back with its Python traceback, and even a deliberate
   ``DBusError`` (its own Properties handler raises them) is logged as an ERROR with a
   traceback, because ``SendReply.__exit__`` drops the "handled" result: here
   ``_send_reply`` and ``_reply`` map every exception with ``errors.to_dbus``, which logs
   only unexpected ones, and nothing propagates further;
3. a call with the right name but wrong argument types is ``UnknownMethod``: here it is
   ``InvalidArgs`` saying which types were expected;
4. ObjectManager signals are sent from the child object's path: here they come from the
   manager object, as the ObjectManager specification says;
5. a call without the (optional) interface header matches nothing, and was answered with
   a nonsensical InvalidArgs: here it goes to the interface at that path with a method of
   that name, or is UnknownMethod;
6. its writer drops the connection when the socket is full (``writer.Writer`` waits), and
   nothing bounds what one client may have in flight: here a client with
   ``MAX_CALLS_IN_FLIGHT`` calls running gets LimitsExceeded for more;
7. a lost connection nobody waits for (a failed start) logs "Future exception was never
   retrieved": here the disconnect future's outcome is always collected;
8. exporting costs a scan of the class per object (``inspect.getmembers``), and
   export, unexport and PropertiesChanged each search every exported path: here
   ``CheapInterface`` scans and introspects once per class, and ``export_object``,
   ``unexport_object`` and ``emit_properties_changed`` take the path they act on.
   ``export_object(announce=False)`` exports without InterfacesAdded, for the objects
   exported before the name is owned (nobody can have subscribed to them yet);
9. GetManagedObjects marshals every property of every object on every call (a megabyte
   at a thousand overlays): here each object's entry is kept marshalled for as long as
   its plain values (``property_readings``) stay the same, and the reply is the entries
   joined (premarshalled.py). The values are read anew for every call, so nothing is ever stale:
   no invalidation to forget when a property row is added.

Unix fds received with any message are closed once it is handled: by ``_reply`` for the
calls our methods serve, by ``_on_message`` for everything else (a Ping or a signal with
fds attached must not cost the daemon an fd, or any caller could exhaust them), except
the reply to a call the daemon made and waits for, whose caller takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next import introspection as intr
from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface

from overlayd.bus.errors import InvalidArgs, LimitsExceeded, UnknownMethod, shown, to_dbus
from overlayd.bus.names import ROOT_PATH
from overlayd.bus.premarshalled import Entry, MarshalledReturn, dict_array, dict_entry
from overlayd.bus.writer import Writer

log = logging.getLogger("overlayd.bus")

current_message: contextvars.ContextVar[Message] = contextvars.ContextVar("current_message")

SendReply = Callable[[Message], None]

OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
# The methods dbus-next serves on every object, for calls that name no interface.
STANDARD_METHODS = {
    "Introspect": "org.freedesktop.DBus.Introspectable",
    "Ping": "org.freedesktop.DBus.Peer", "GetMachineId": "org.freedesktop.DBus.Peer",
    "Get": PROPERTIES, "GetAll": PROPERTIES, "Set": PROPERTIES,
    "GetManagedObjects": OBJECT_MANAGER,
}
# Calls of one client that may run at once; every client overlayd knows of makes one at a
# time, and each running call holds a task (and maybe a worker thread's turn).
MAX_CALLS_IN_FLIGHT = 64


class HasPropertyValues(Protocol):
    """An interface that can give all its properties at once (synchronous getters)."""

    name: str  # the interface's, as ServiceInterface has it

    def property_values(self) -> dict[str, Variant]: ...


class HasPropertyReadings(HasPropertyValues, Protocol):
    """One that gives them as plain values first, cheap to compare (properties.py)."""

    def property_readings(self) -> list[Any]: ...
    def property_variants(self, values: list[Any]) -> dict[str, Variant]: ...


def _gives_all(interface: object) -> TypeGuard[HasPropertyValues]:
    # not a runtime_checkable isinstance: that costs microseconds an object
    return hasattr(interface, "property_values")


def _gives_readings(interface: object) -> TypeGuard[HasPropertyReadings]:
    return hasattr(interface, "property_readings")


@dataclass
class _Marshalled:
    """An object's GetManagedObjects entry, marshalled from VALUES of INTERFACE."""

    interface: object
    values: list[Any]
    entry: Entry


MANAGED_OBJECTS = "a{oa{sa{sv}}}"


_MEMBERS: dict[type, tuple[Any, Any, Any]] = {}
_INTROSPECTION: dict[type, intr.Interface] = {}


class CheapInterface(ServiceInterface):  # type: ignore[misc]
    """A ServiceInterface whose members are found, and whose introspection is made, once per
    class: dbus-next scans the class for every instance (one per overlay) and introspects
    every object on every Introspect call."""

    # ServiceInterface's own (name-mangled) lists, set in __init__.
    _ServiceInterface__methods: list[Any]
    _ServiceInterface__properties: list[Any]
    _ServiceInterface__signals: list[Any]
    _ServiceInterface__buses: set[Any]

    def __init__(self, name: str) -> None:
        members = _MEMBERS.get(type(self))
        if members is None:
            super().__init__(name)
            _MEMBERS[type(self)] = (self._ServiceInterface__methods,
                                    self._ServiceInterface__properties,
                                    self._ServiceInterface__signals)
            return
        # What ServiceInterface.__init__ sets, from the first instance's scan; the lists
        # are never changed after it, so all instances can share them.
        self.name = name
        (self._ServiceInterface__methods, self._ServiceInterface__properties,
         self._ServiceInterface__signals) = members
        self._ServiceInterface__buses = set()

    def introspect(self) -> intr.Interface:
        cached = _INTROSPECTION.get(type(self))
        if cached is None:
            cached = _INTROSPECTION[type(self)] = self.describe(super().introspect())
        return cached

    def describe(self, iface: intr.Interface) -> intr.Interface:
        """What the class adds to dbus-next's introspection (names, annotations)."""
        return iface


class OverlaydBus(MessageBus):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer = Writer(self)
        self.in_flight: dict[str, int] = {}  # calls of our methods running, per client
        self.marshalled: dict[str, _Marshalled] = {}  # GetManagedObjects entries, per path
        # Whoever waits for the disconnect reads its outcome; this reads it in any case, so
        # that a connection lost with nobody waiting (a failed start) logs nothing.
        self._disconnect_future.add_done_callback(
            lambda f: f.cancelled() or f.exception())

    # -- exporting ------------------------------------------------------------------------

    def export_object(self, path: str, interface: ServiceInterface, *,
                      announce: bool = True) -> None:
        """export() for an interface not yet exported, in constant time; with ANNOUNCE
        False, without InterfacesAdded."""
        self._path_exports.setdefault(path, []).append(interface)
        ServiceInterface._add_bus(interface, self)
        if announce:
            self._emit_interface_added(path, interface)

    def unexport_object(self, path: str, interface: ServiceInterface) -> None:
        """unexport() of an interface exported once, at PATH only, in constant time."""
        exports = self._path_exports.get(path, [])
        if interface not in exports:
            return
        exports.remove(interface)
        if not exports:
            del self._path_exports[path]
        self.marshalled.pop(path, None)
        ServiceInterface._remove_bus(interface, self)
        self._emit_interface_removed(path, [interface.name])

    def emit_properties_changed(self, path: str, interface: str,
                                changed: dict[str, Variant]) -> None:
        if self._disconnected:
            return
        self.send(Message.new_signal(path=path, interface=PROPERTIES,
                                     member="PropertiesChanged", signature="sa{sv}as",
                                     body=[interface, changed, []]))

    def emit_signal(self, path: str, interface: str, member: str, signature: str,
                    body: list[Any]) -> None:
        """A signal of the object at PATH, sent without searching the exports."""
        if self._disconnected:
            return
        self.send(Message.new_signal(path=path, interface=interface, member=member,
                                     signature=signature, body=body))

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected:
            return

        def send(iface: ServiceInterface, values: Any, _user: Any, err: Any) -> None:
            if err is not None:
                log.warning("Cannot read the properties of %s for InterfacesAdded: %s, "
                            "ignoring.", path, err)
                return
            self.send(Message.new_signal(
                path=_manager_of(path), interface=OBJECT_MANAGER,
                member="InterfacesAdded", signature="oa{sa{sv}}",
                body=[path, {iface.name: values}]))

        if _gives_all(interface):
            send(interface, interface.property_values(), None, None)
        else:
            ServiceInterface._get_all_property_values(interface, send)

    def _emit_interface_removed(self, path: str, removed: list[str]) -> None:
        if self._disconnected:
            return
        self.send(Message.new_signal(
            path=_manager_of(path), interface=OBJECT_MANAGER,
            member="InterfacesRemoved", signature="oas", body=[path, removed]))

    # -- serving calls --------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        # The reply to a call of ours keeps its fds: the caller takes them (logind's
        # inhibitor lock is one) and closes what it does not keep.
        awaited = msg.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR) and \
            msg.reply_serial in self._method_return_handlers
        try:
            if msg.message_type is MessageType.METHOD_CALL and msg.interface is None:
                msg.interface = self._interface_of(msg.path, msg.member)
            super()._on_message(msg)
        finally:
            if not awaited:
                _close_all(msg.unix_fds)
                msg.unix_fds = []

    def _interface_of(self, path: str, member: str) -> str | None:
        """The interface at PATH with a method MEMBER (the D-Bus specification leaves the
        choice open when there are several; ours have none in common)."""
        for interface in self._path_exports.get(path, []):
            for method in ServiceInterface._get_methods(interface):
                if method.name == member and not method.disabled:
                    return str(interface.name)
        return STANDARD_METHODS.get(member)

    def _send_reply(self, msg: Message) -> Any:
        bus = self

        class SendReply:
            def __enter__(self) -> SendReply:
                return self

            def __call__(self, reply: Message) -> None:
                if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                    bus.send(reply)

            def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
                if isinstance(exc, Exception):
                    self(to_dbus(exc)._as_message(msg))
                    return True  # handled: dbus-next would log it again with a traceback
                return False

            def send_error(self, exc: Exception) -> None:
                self(to_dbus(exc)._as_message(msg))

        return SendReply()

    def _make_method_handler(self, interface: ServiceInterface, method: Any) -> Any:
        def handler(msg: Message, send_reply: SendReply) -> None:
            running = self.in_flight.get(msg.sender, 0)
            if running >= MAX_CALLS_IN_FLIGHT:
                raise LimitsExceeded(f"This connection has {running} calls running already; "
                                     "wait for their replies before making more.")
            token = current_message.set(msg)
            try:
                args = ServiceInterface._msg_body_to_args(msg)
                owned, msg.unix_fds = msg.unix_fds, []  # ours now; closed by _reply
                fut = asyncio.ensure_future(method.fn(interface, *args))
            finally:
                current_message.reset(token)
            self.in_flight[msg.sender] = running + 1
            fut.add_done_callback(lambda f: self._reply(msg, method, f, send_reply, owned))

        return handler

    def _reply(self, msg: Message, method: Any, fut: asyncio.Future[Any],
               send_reply: SendReply, owned: list[int]) -> None:
        reply: Message | None = None
        try:
            try:
                result = fut.result()
                body, fds = ServiceInterface._fn_result_to_body(result, method.out_signature_tree)
                reply = Message.new_method_return(msg, method.out_signature, body, fds)
            except Exception as e:  # the one place where every call's errors end
                reply = to_dbus(e)._as_message(msg)
            except asyncio.CancelledError:  # the daemon is stopping: no reply to send
                reply = None
        finally:
            # Before the reply goes: a caller that has its answer finds the fds it sent
            # closed already.
            _close_all(owned)
            left = self.in_flight.pop(msg.sender, 1) - 1
            if left:
                self.in_flight[msg.sender] = left
        if reply is not None:
            send_reply(reply)

    def _find_message_handler(self, msg: Message) -> Any:
        handler = super()._find_message_handler(msg)
        if handler is not None or msg.message_type is not MessageType.METHOD_CALL:
            return handler
        if msg.interface is None:
            return _unknown_method
        for interface in self._path_exports.get(msg.path, []):
            if msg.interface != interface.name:
                continue
            for method in ServiceInterface._get_methods(interface):
                if method.name == msg.member and not method.disabled:
                    return _wrong_signature(method.name, method.in_signature)
        return None

    def _default_properties_handler(self, msg: Message, send_reply: SendReply) -> None:
        """GetAll of an interface that gives all its values at once, so that GetAll and
        GetManagedObjects agree (and read the upper's usage once, not per property)."""
        if msg.member == "GetAll" and msg.signature == "s":
            for interface in self._path_exports.get(msg.path, []):
                if interface.name == msg.body[0] and _gives_all(interface):
                    send_reply(Message.new_method_return(msg, "a{sv}",
                                                         [interface.property_values()]))
                    return
        super()._default_properties_handler(msg, send_reply)

    def _introspect_export_path(self, path: str) -> intr.Node:
        """dbus-next names as a child every exported path that merely contains PATH
        (split(path)): overlay 'p1' listed a node 'dup' for overlay 'p1dup', a path that
        does not exist. Children are the paths below PATH, as in GetManagedObjects."""
        node = super()._introspect_export_path(path)
        prefix = "/" if path == "/" else path + "/"
        children = {p[len(prefix):].split("/", 1)[0] for p in self._path_exports
                    if p.startswith(prefix) and len(p) > len(prefix)}
        node.nodes = [intr.Node(name) for name in sorted(children)]
        return node

    def _default_get_managed_objects_handler(self, msg: Message, send_reply: SendReply) -> None:
        nodes = [(p, ifaces) for p, ifaces in self._path_exports.items()
                 if msg.path == "/" or p.startswith(msg.path + "/")]
        if not all(_gives_all(i) for _, ifaces in nodes for i in ifaces):
            super()._default_get_managed_objects_handler(msg, send_reply)
            return
        entries = [self._managed_entry(p, ifaces) for p, ifaces in nodes]
        send_reply(MarshalledReturn(msg, MANAGED_OBJECTS, dict_array(entries)))

    def _managed_entry(self, path: str, ifaces: list[ServiceInterface]) -> Entry:
        """PATH's entry in GetManagedObjects: the one marshalled before if its interface
        and values are the same as then."""
        if len(ifaces) != 1 or not _gives_readings(ifaces[0]):
            return dict_entry(MANAGED_OBJECTS[2:-1], path,
                              {i.name: i.property_values() for i in ifaces})
        interface = ifaces[0]
        values = interface.property_readings()
        known = self.marshalled.get(path)
        if known is not None and known.interface is interface and known.values == values:
            return known.entry
        entry = dict_entry(MANAGED_OBJECTS[2:-1], path,
                           {interface.name: interface.property_variants(values)})
        self.marshalled[path] = _Marshalled(interface, values, entry)
        return entry


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _manager_of(path: str) -> str:
    return ROOT_PATH if path.startswith(ROOT_PATH + "/") else path


def _wrong_signature(member: str, expected: str) -> Callable[[Message, SendReply], None]:
    def handler(msg: Message, send_reply: SendReply) -> None:
        raise InvalidArgs(f"{member}() takes arguments of type '{expected}', "
                          f"not '{shown(msg.signature)}'.")
    return handler


def _unknown_method(msg: Message, send_reply: SendReply) -> None:
    raise UnknownMethod(f"There is no method '{shown(msg.member)}' at {shown(msg.path, 200)}.")
