"""OverlaydBus: dbus-next's MessageBus with its rough edges filed off, in one place.

dbus-next 0.2.3 (pinned in pyproject.toml) has four habits a system service cannot keep:

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
   manager object, as the ObjectManager specification says.

Unix fds received with any message are closed once it is handled: by ``_reply`` for the
calls our methods serve, by ``_on_message`` for everything else (a Ping or a signal with
fds attached must not cost the daemon an fd, or any caller could exhaust them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface

from overlayd.bus.errors import to_dbus
from overlayd.bus.names import INVALID_ARGS, ROOT_PATH

log = logging.getLogger("overlayd.bus")

current_message: contextvars.ContextVar[Message] = contextvars.ContextVar("current_message")

SendReply = Callable[[Message], None]


@runtime_checkable
class HasPropertyValues(Protocol):
    """An interface that can give all its properties at once (synchronous getters)."""

    def property_values(self) -> dict[str, Any]: ...


class OverlaydBus(MessageBus):  # type: ignore[misc]
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
            token = current_message.set(msg)
            try:
                args = ServiceInterface._msg_body_to_args(msg)
                owned, msg.unix_fds = msg.unix_fds, []  # ours now; closed by _reply
                fut = asyncio.ensure_future(method.fn(interface, *args))
            finally:
                current_message.reset(token)
            fut.add_done_callback(lambda f: self._reply(msg, method, f, send_reply, owned))

        return handler

    def _on_message(self, msg: Message) -> None:
        try:
            super()._on_message(msg)
        finally:
            _close_all(msg.unix_fds)
            msg.unix_fds = []

    def _reply(self, msg: Message, method: Any, fut: asyncio.Future[Any],
               send_reply: SendReply, owned: list[int]) -> None:
        try:
            try:
                result = fut.result()
                body, fds = ServiceInterface._fn_result_to_body(result, method.out_signature_tree)
                reply = Message.new_method_return(msg, method.out_signature, body, fds)
            except Exception as e:  # the one place where every call's errors end
                reply = to_dbus(e)._as_message(msg)
            except asyncio.CancelledError:  # the daemon is stopping: no reply to send
                return
            send_reply(reply)
        finally:
            _close_all(owned)

    def _find_message_handler(self, msg: Message) -> Any:
        handler = super()._find_message_handler(msg)
        if handler is not None or msg.message_type is not MessageType.METHOD_CALL:
            return handler
        for interface in self._path_exports.get(msg.path, []):
            if msg.interface not in (None, interface.name):
                continue
            for method in ServiceInterface._get_methods(interface):
                if method.name == msg.member and not method.disabled:
                    return _wrong_signature(method.name, method.in_signature)
        return None

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected:
            return

        def send(iface: ServiceInterface, values: Any, _user: Any, err: Any) -> None:
            if err is not None:
                log.warning("Cannot read the properties of %s for InterfacesAdded: %s, "
                            "ignoring.", path, err)
                return
            self.send(Message.new_signal(
                path=_manager_of(path), interface="org.freedesktop.DBus.ObjectManager",
                member="InterfacesAdded", signature="oa{sa{sv}}",
                body=[path, {iface.name: values}]))

        if isinstance(interface, HasPropertyValues):
            send(interface, interface.property_values(), None, None)
        else:
            ServiceInterface._get_all_property_values(interface, send)

    def _default_get_managed_objects_handler(self, msg: Message, send_reply: SendReply) -> None:
        nodes = {p: ifaces for p, ifaces in self._path_exports.items()
                 if msg.path == "/" or p.startswith(msg.path + "/")}
        if not all(isinstance(i, HasPropertyValues) for ifaces in nodes.values()
                   for i in ifaces):
            super()._default_get_managed_objects_handler(msg, send_reply)
            return
        result = {p: {i.name: i.property_values() for i in ifaces} for p, ifaces in nodes.items()}
        send_reply(Message.new_method_return(msg, "a{oa{sa{sv}}}", [result]))

    def _emit_interface_removed(self, path: str, removed: list[str]) -> None:
        if self._disconnected:
            return
        self.send(Message.new_signal(
            path=_manager_of(path), interface="org.freedesktop.DBus.ObjectManager",
            member="InterfacesRemoved", signature="oas", body=[path, removed]))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _manager_of(path: str) -> str:
    return ROOT_PATH if path.startswith(ROOT_PATH + "/") else path


def _wrong_signature(member: str, expected: str) -> Callable[[Message, SendReply], None]:
    def handler(msg: Message, send_reply: SendReply) -> None:
        send_reply(Message.new_error(
            msg, INVALID_ARGS,
            f"{member}() takes arguments of type '{expected}', not '{msg.signature}'."))
    return handler
