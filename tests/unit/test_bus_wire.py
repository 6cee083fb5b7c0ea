"""The wire client's marshalling (bus/wire.py), held to dbus-next's: what one writes the
other reads, for every type overlayd's replies carry."""

from __future__ import annotations

from typing import Any

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next._private.unmarshaller import Unmarshaller

from overlayd.bus.wire import (
    WireVariant,
    _parse_address,
    _Reader,
    encode,
    run_sync,
    split_types,
    unwrap,
)


def test_split_types() -> None:
    assert split_types("sa{sv}a(so)ya{sa{sv}}t") == ["s", "a{sv}", "a(so)", "y", "a{sa{sv}}",
                                                      "t"]


@pytest.mark.parametrize(("signature", "body"), [
    ("", []),
    ("s", ["org.overlayd.Overlayd1.Overlay"]),
    ("ss", ["org.overlayd.Overlayd1.Manager", "RootOverlay"]),
    ("sa{sv}", ["demo", {}]),
])
def test_a_call_we_write_dbus_next_reads(signature: str, body: list[Any]) -> None:
    data = encode(7, {1: ("o", "/org/overlayd/Overlayd1"), 2: ("s", "org.x.Y"),
                      3: ("s", "Get"), 6: ("s", "org.overlayd.Overlayd1")}, signature, body,
                  flags=4)

    class Stream:
        def __init__(self) -> None:
            self.data = data

        def read(self, n: int) -> bytes:
            out, self.data = self.data[:n], self.data[n:]
            return out

    u = Unmarshaller(Stream())  # type: ignore[arg-type]
    msg = u.unmarshall()
    assert msg is not None and msg.serial == 7 and msg.member == "Get"
    assert msg.path == "/org/overlayd/Overlayd1" and msg.signature == signature
    assert msg.body == body and msg.flags.value == 4


def test_a_reply_dbus_next_writes_we_read() -> None:
    props = {"Name": Variant("s", "demo"), "UpperUsed": Variant("t", 1 << 40),
             "Layers": Variant("as", ["/a", "/b"]), "HalfCommitted": Variant("b", True),
             "OwnerUID": Variant("u", 1000), "Progress": Variant("d", 0.5),
             "RootOverlay": Variant("o", "/")}
    body = [[["a", "/o/a"], ["b", "/o/b"]], props, {"/j/1": {"I": {"x": Variant("y", 3)}}}]
    msg = Message(message_type=MessageType.METHOD_RETURN, reply_serial=3, serial=9,
                  destination=":1.5", signature="a(so)a{sv}a{oa{sa{sv}}}", body=body)
    data = msg._marshall()
    fields_len = int.from_bytes(data[12:16], "little")
    start = 16 + fields_len + (-(16 + fields_len) % 8)
    r = _Reader(data[start:])
    items, got, objects = (r.read(t) for t in split_types("a(so)a{sv}a{oa{sa{sv}}}"))
    assert items == [["a", "/o/a"], ["b", "/o/b"]]
    assert all(isinstance(v, WireVariant) for v in got.values())
    assert unwrap(got) == unwrap(props) == {
        "Name": "demo", "UpperUsed": 1 << 40, "Layers": ["/a", "/b"], "HalfCommitted": True,
        "OwnerUID": 1000, "Progress": 0.5, "RootOverlay": "/"}
    assert unwrap(objects) == {"/j/1": {"I": {"x": 3}}}


def test_addresses() -> None:
    assert _parse_address("unix:path=/run/dbus/system_bus_socket")[1] == \
        "/run/dbus/system_bus_socket"
    assert _parse_address("tcp:host=x;unix:abstract=/tmp/dbus-a%2cb,guid=1")[1] == \
        "\0/tmp/dbus-a,b"
    with pytest.raises(OSError):
        _parse_address("tcp:host=localhost,port=1")


def test_run_sync_refuses_a_coroutine_that_waits() -> None:
    import asyncio

    async def waits() -> int:
        await asyncio.sleep(0)
        return 1

    async def does_not() -> int:
        return 2

    assert run_sync(does_not()) == 2
    with pytest.raises(RuntimeError, match="waited"):
        run_sync(waits())
