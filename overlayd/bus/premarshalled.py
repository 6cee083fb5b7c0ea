"""Replies put together from parts marshalled before.

GetManagedObjects at a thousand overlays is a reply of about a megabyte, 21,000 variants,
that dbus-next's pure-Python marshaller would build anew for every call. Here each
object's entry is marshalled on its own (``dict_entry``), kept by the bus for as long as
its values stay the same (connection.py), and the reply's body is the entries joined
(``dict_array``), sent as a ``MarshalledReturn``.

Why joining is exact: in D-Bus's wire format a dict entry starts at a multiple of 8 and
nothing inside it is aligned to more than 8, so an entry's bytes do not depend on where
in the message it stands. tests/unit/test_bus_premarshalled.py holds the result byte-equal to what
dbus-next marshals in one piece.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

from dbus_next import Message, MessageType, Variant
from dbus_next._private.constants import LITTLE_ENDIAN, PROTOCOL_VERSION, HeaderField
from dbus_next._private.marshaller import Marshaller
from dbus_next._private.unmarshaller import Unmarshaller


@dataclass(frozen=True)
class Entry:
    """A dict entry, marshalled as it stands in an array of them."""

    data: bytes  # padded with zeros to a multiple of 8, where the next entry starts
    pad: int  # how many of those zeros: the last entry of an array goes without them


def dict_entry(signature: str, key: Any, value: Any) -> Entry:
    """The entry KEY: VALUE of a dict whose entries are of SIGNATURE (say "oa{sv}")."""
    m = Marshaller(signature, [key, value])
    m.marshall()
    end = len(m.buffer)
    m.align(8)
    return Entry(bytes(m.buffer), len(m.buffer) - end)


def dict_array(entries: list[Entry]) -> bytes:
    """A body that is one array of ENTRIES: its length, padding to the first entry (at
    8), the entries."""
    data = b"".join(e.data for e in entries)
    if entries:
        data = data[:len(data) - entries[-1].pad]
    return struct.pack("<I4x", len(data)) + data


class MarshalledReturn(Message):  # type: ignore[misc]
    """The reply to CALL whose body, of SIGNATURE, is marshalled already. Its ``body``
    is decoded only if someone reads it (tests, a log)."""

    def __init__(self, call: Message, signature: str, body: bytes) -> None:
        self.marshalled_body = body
        self._decoded: list[Any] | None = None
        super().__init__(message_type=MessageType.METHOD_RETURN, reply_serial=call.serial,
                         destination=call.sender, signature=signature)

    @property
    def body(self) -> list[Any]:
        if self._decoded is None:
            msg = Unmarshaller(io.BytesIO(self._marshall())).unmarshall()
            self._decoded = list(msg.body)
        return self._decoded

    @body.setter
    def body(self, value: list[Any]) -> None:  # Message.__init__ sets [] for none
        self._decoded = value or None

    def _marshall(self, negotiate_unix_fd: bool = False) -> bytes:
        """As Message._marshall, for a method return without fds, the body as it is."""
        fields: list[list[Any]] = []
        if self.reply_serial:
            fields.append([HeaderField.REPLY_SERIAL.value, Variant("u", self.reply_serial)])
        if self.destination:
            fields.append([HeaderField.DESTINATION.value, Variant("s", self.destination)])
        fields.append([HeaderField.SIGNATURE.value, Variant("g", self.signature)])
        header = Marshaller("yyyyuua(yv)", [
            LITTLE_ENDIAN, self.message_type.value, self.flags.value, PROTOCOL_VERSION,
            len(self.marshalled_body), self.serial, fields])
        header.marshall()
        header.align(8)
        return bytes(header.buffer) + self.marshalled_body
