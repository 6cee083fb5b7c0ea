"""The wire client (bus/wire.py): jeepney's replies read as dbus-next's are, so the reading
commands answer the same on both clients. The calls themselves are tested against a real
daemon in tests/bus (every `overlayctl list`, `status`, `jobs`, `layers`)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from dbus_next import Variant
from jeepney import new_method_return
from jeepney.low_level import Message

from overlayd.bus.wire import ClientError, ClientReads, WireClient, run_sync, value_of


def test_a_variant_is_read_from_either_library() -> None:
    assert value_of(Variant("t", 1 << 40)) == value_of(("t", 1 << 40)) == 1 << 40
    assert value_of(Variant("as", ["/a"])) == value_of(("as", ["/a"])) == ["/a"]


class Replies(ClientReads):
    """ClientReads over canned jeepney replies, as WireClient.call returns them."""

    def __init__(self, bodies: dict[str, tuple[Any, ...]]) -> None:
        self.bodies = bodies

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, fds: list[int] | None = None) -> list[Any]:
        return list(self.bodies[member])


def test_the_reading_methods_on_jeepney_values() -> None:
    jobs = {"/org/overlayd/Overlayd1/job/2": {"org.overlayd.Overlayd1.Job": {
        "Operation": ("s", "commit"), "Progress": ("d", 0.5), "Objects": ("ao", ["/o/a"])}},
        "/org/overlayd/Overlayd1/overlay/a": {"org.overlayd.Overlayd1.Overlay": {}}}
    client = Replies({"GetAll": ({"Name": ("s", "a"), "UpperUsed": ("t", 7)},),
                      "Get": (("o", "/"),), "GetManagedObjects": (jobs,),
                      "ListOverlays": ([("a", "/o/a")],)})
    assert run_sync(client.properties("/o/a")) == {"Name": "a", "UpperUsed": 7}
    assert run_sync(client.root_overlay()) == "/"
    assert run_sync(client.overlays()) == [("a", "/o/a")]
    assert run_sync(client.jobs()) == [{"Operation": "commit", "Progress": 0.5,
                                        "Objects": ["/o/a"], "Id": 2,
                                        "ObjectPath": "/org/overlayd/Overlayd1/job/2"}]


def test_no_bus_is_unreachable(tmp_path: Any) -> None:
    with pytest.raises(ClientError) as e:
        WireClient.connect(address=f"unix:path={tmp_path}/no-bus")
    assert e.value.unreachable and "no-bus" in str(e.value)


def test_start_up_imports_neither_asyncio_nor_dbus_next() -> None:
    import subprocess
    code = ("import sys, overlayd.bus.wire; "
            "print(sorted(m for m in ('asyncio', 'dbus_next') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


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


def test_an_error_reply_keeps_its_name() -> None:
    assert Message is not None and new_method_return is not None  # jeepney is importable
    e = ClientError("org.overlayd.Overlayd1.Error.NoSuchOverlay", "No overlay 'x'.")
    assert e.error is not None and not e.unreachable


@pytest.mark.parametrize("address", ["garbage", "unix", "nonsense:"])
def test_a_bad_bus_address_is_said_in_words(address: str) -> None:
    """jeepney's own ValueError for these reads "not enough values to unpack"."""
    with pytest.raises(ClientError) as e:
        WireClient.connect(address=address)
    assert "unpack" not in str(e.value) and f"Cannot connect to {address}" in str(e.value)
