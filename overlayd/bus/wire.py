"""overlayctl's reading commands over the bus without dbus-next or asyncio (issue 15).

``overlayctl list`` spent most of its start-up importing asyncio and dbus-next (about
40 ms of the 100 here) to make two kinds of method calls. ``WireClient`` speaks the D-Bus
wire protocol itself, on a blocking unix socket: SASL EXTERNAL, Hello, method calls and
their replies, with the standard library only. It serves the commands that only read
(list, status, jobs, layers, diff); anything that waits for signals or sends an fd uses
dbus-next (``client.OverlaydClient``). Both share the reading methods (``ClientReads``),
so the two paths cannot answer differently.

Its methods are coroutines that never suspend, so the commands' code is the same for
both clients, and ``run_sync`` drives one to its end without an event loop.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Coroutine
from typing import Any, TypeVar

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
SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"
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


class WireVariant:
    """A variant as the wire client reads it: like dbus-next's, a signature and a value."""

    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value: Any) -> None:
        self.signature = signature
        self.value = value

    def __repr__(self) -> str:
        return f"WireVariant({self.signature!r}, {self.value!r})"


def unwrap(value: Any) -> Any:
    """VALUE with every variant in it (dbus-next's or ours) replaced by its value."""
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
        return {k: v.value for k, v in props.items()}

    async def root_overlay(self) -> str:
        """The root overlay's object path, or "/" when the root is not on an overlay."""
        (value,) = await self.call(ROOT_PATH, PROPERTIES, "Get", "ss",
                                   [MANAGER_IFACE, "RootOverlay"])
        return str(value.value)

    async def diff(self, name: str) -> list[tuple[str, str]]:
        (changes,) = await self.call(await self.path_of(name), OVERLAY_IFACE, "Diff")
        return [(p, k) for p, k in changes]

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job's properties, with ObjectPath and Id, by number."""
        (objects,) = await self.call(ROOT_PATH, OBJECT_MANAGER, "GetManagedObjects")
        out = []
        for path, ifaces in objects.items():
            if JOB_IFACE in ifaces and path.startswith(JOB_PREFIX):
                props = unwrap(ifaces[JOB_IFACE])
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


# -- the wire format (D-Bus specification, "Message Protocol") ----------------------------

_FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4),
          "u": ("I", 4), "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8), "h": ("I", 4)}
_ALIGN = {**{k: v[1] for k, v in _FIXED.items()}, "s": 4, "o": 4, "g": 1, "a": 4, "(": 8,
          "{": 8, "v": 1}
FLAG_ALLOW_INTERACTIVE_AUTHORIZATION = 0x4
METHOD_CALL, METHOD_RETURN, ERROR = 1, 2, 3
_FIELDS = {1: "path", 2: "interface", 3: "member", 4: "error_name", 5: "reply_serial",
           6: "destination", 7: "sender", 8: "signature", 9: "unix_fds"}


def _one_type(sig: str, i: int) -> int:
    """The end of the single complete type that starts at SIG[I]."""
    c = sig[i]
    if c == "a":
        return _one_type(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        i += 1
        while sig[i] != close:
            i = _one_type(sig, i)
        return i + 1
    return i + 1


def split_types(sig: str) -> list[str]:
    out, i = [], 0
    while i < len(sig):
        end = _one_type(sig, i)
        out.append(sig[i:end])
        i = end
    return out


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def pad(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def write(self, t: str, v: Any) -> None:
        c = t[0]
        self.pad(_ALIGN[c])
        if c in _FIXED:
            self.buf += struct.pack("<" + _FIXED[c][0], int(v) if c == "b" else v)
        elif c in "so":
            data = v.encode()
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif c == "g":
            data = v.encode()
            self.buf += bytes([len(data)]) + data + b"\0"
        elif c == "v":
            self.write("g", v.signature)
            self.write(v.signature, v.value)
        elif c == "a":
            self.buf += b"\0\0\0\0"
            at = len(self.buf)
            self.pad(_ALIGN[t[1]])
            start = len(self.buf)
            items = v.items() if t[1] == "{" else v
            for item in items:
                self.write(t[1:], item)
            struct.pack_into("<I", self.buf, at - 4, len(self.buf) - start)
        else:  # ( or {: a struct or a dict entry
            for sub, item in zip(split_types(t[1:-1]), v, strict=True):
                self.write(sub, item)


class _Reader:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.pos = offset

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def read(self, t: str) -> Any:
        c = t[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            fmt, size = _FIXED[c]
            (v,) = struct.unpack_from("<" + fmt, self.data, self.pos)
            self.pos += size
            return bool(v) if c == "b" else v
        if c in "so":
            (n,) = struct.unpack_from("<I", self.data, self.pos)
            s = self.data[self.pos + 4:self.pos + 4 + n].decode()
            self.pos += 5 + n
            return s
        if c == "g":
            n = self.data[self.pos]
            s = self.data[self.pos + 1:self.pos + 1 + n].decode()
            self.pos += 2 + n
            return s
        if c == "v":
            sig = self.read("g")
            return WireVariant(sig, self.read(sig))
        if c == "a":
            (n,) = struct.unpack_from("<I", self.data, self.pos)
            self.pos += 4
            self.align(_ALIGN[t[1]])
            end = self.pos + n
            if t[1] == "{":
                out: dict[Any, Any] = {}
                while self.pos < end:
                    k, v = self.read(t[1:])
                    out[k] = v
                return out
            items = []
            while self.pos < end:
                items.append(self.read(t[1:]))
            return items
        return [self.read(sub) for sub in split_types(t[1:-1])]


def encode(serial: int, fields: dict[int, tuple[str, Any]], signature: str, body: list[Any],
           flags: int = 0) -> bytes:
    """A method call: the header (with its fields), padded to 8, then the body."""
    b = _Writer()
    for sub, value in zip(split_types(signature), body, strict=True):
        b.write(sub, value)
    if signature:
        fields = {**fields, 8: ("g", signature)}
    h = _Writer()
    h.buf += struct.pack("<cBBBII", b"l", METHOD_CALL, flags, 1, len(b.buf), serial)
    h.write("a(yv)", [(code, WireVariant(sig, v)) for code, (sig, v) in fields.items()])
    h.pad(8)
    return bytes(h.buf + b.buf)


def _parse_address(address: str) -> tuple[int, str | bytes]:
    """(family, socket address) of the first unix: address among ADDRESS's."""
    for entry in address.split(";"):
        kind, _, rest = entry.partition(":")
        if kind != "unix":
            continue
        keys = dict(kv.partition("=")[::2] for kv in rest.split(",") if kv)
        unescaped = {k: _unescape(v) for k, v in keys.items()}
        if "path" in unescaped:
            return socket.AF_UNIX, unescaped["path"]
        if "abstract" in unescaped:
            return socket.AF_UNIX, "\0" + unescaped["abstract"]
    raise OSError(f"no unix address in '{address}'")


def _unescape(value: str) -> str:
    out, i = bytearray(), 0
    while i < len(value):
        if value[i] == "%":
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out += value[i].encode()
            i += 1
    return out.decode()


class WireClient(ClientReads):
    """A blocking connection to the system bus, for calls whose replies are all we need."""

    def __init__(self, sock: socket.socket, interactive: bool) -> None:
        self.sock = sock
        self.interactive = interactive
        self.serial = 0
        self.pending = b""

    @classmethod
    def connect(cls, *, interactive: bool = True, address: str | None = None) -> WireClient:
        where = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(25)  # what dbus-next and busctl wait for a reply
            sock.connect(_parse_address(where)[1])
            sock.sendall(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode()
                         + b"\r\n")
            line = cls._line(sock)
            if not line.startswith(b"OK "):
                raise OSError(f"the bus refused us: {line.decode(errors='replace')}")
            sock.sendall(b"BEGIN\r\n")
            client = cls(sock, interactive)
            client._call_bus("Hello")
            sock.settimeout(None)  # a call may wait for polkit, as with dbus-next
        except (OSError, ValueError) as e:
            sock.close()
            shown = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "the system bus")
            raise ClientError(CONNECT, f"Cannot connect to {shown}: {e}") from None
        return client

    @staticmethod
    def _line(sock: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(1)
            if not chunk:
                raise OSError("the bus closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()

    def _call_bus(self, member: str) -> list[Any]:
        return self._call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", member, "", [], 0)

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, fds: list[int] | None = None) -> list[Any]:
        if fds:
            raise ValueError("the wire client passes no file descriptors")
        flags = FLAG_ALLOW_INTERACTIVE_AUTHORIZATION if self.interactive else 0
        return self._call(BUS_NAME, path, interface, member, signature, body or [], flags)

    def _call(self, destination: str, path: str, interface: str, member: str,
              signature: str, body: list[Any], flags: int) -> list[Any]:
        self.serial += 1
        fields = {1: ("o", path), 2: ("s", interface), 3: ("s", member), 6: ("s", destination)}
        self.sock.sendall(encode(self.serial, fields, signature, body, flags))
        while True:
            kind, header, reader, sig = self._receive()
            if header.get("reply_serial") != self.serial:
                continue  # a signal (NameAcquired) or anything else: not ours
            values = [reader.read(t) for t in split_types(sig)]
            if kind == ERROR:
                name = str(header.get("error_name", ""))
                text = values[0] if values and isinstance(values[0], str) else ""
                raise ClientError(name, text or name or "error")
            return values

    def _receive(self) -> tuple[int, dict[str, Any], _Reader, str]:
        fixed = self._exactly(16)
        if fixed[:1] != b"l":
            raise ClientError(CONNECT, "The bus sent a big-endian message, which overlayctl "
                              "does not read.")
        _e, kind, _flags, _v, body_len, _serial, fields_len = struct.unpack("<cBBBIII", fixed)
        header_len = 16 + fields_len + (-(16 + fields_len) % 8)
        data = fixed + self._exactly(header_len - 16 + body_len)
        r = _Reader(data, 12)
        header = {_FIELDS.get(code, str(code)): v.value for code, v in r.read("a(yv)")}
        return kind, header, _Reader(data[header_len:]), str(header.get("signature", ""))

    def _exactly(self, n: int) -> bytes:
        while len(self.pending) < n:
            chunk = self.sock.recv(max(65536, n - len(self.pending)))
            if not chunk:
                raise ClientError(DBUS_ERROR_PREFIX + "NoReply",
                                  "The bus closed the connection.")
            self.pending += chunk
        data, self.pending = self.pending[:n], self.pending[n:]
        return data
