"""The bus adapter's connection without a bus daemon: OverlaydBus on a socket nobody answers
(what it would send is caught), the Service keeping objects in step, and the writer on a
socket pair (no root)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next.service import method

from overlayd.bus.auth import RootOnly
from overlayd.bus.connection import MAX_CALLS_IN_FLIGHT, CheapInterface, OverlaydBus
from overlayd.bus.service import Service
from overlayd.bus.writer import Writer
from overlayd.model import OverlayState, Upper
from tests.unit.test_bus_objects import Record, StubManager

ROOT = "/org/overlayd/Overlayd1"


class Harness:
    """An OverlaydBus whose sends are kept in ``sent`` instead of written."""

    def __init__(self, tmp: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(tmp / "bus"))
        self.listener.listen()
        self.bus = OverlaydBus(bus_address=f"unix:path={tmp / 'bus'}")
        self.sent: list[Message] = []
        self.bus.send = self.sent.append

    def call(self, path: str, member: str, interface: str | None = None, signature: str = "",
             body: list[Any] | None = None, sender: str = ":1.5") -> Message:
        """Deliver a call as if from SENDER; its reply, once the loop has served it."""
        serial = 1000 + len(self.sent) + sum(self.bus.in_flight.values())
        self.bus._on_message(Message(path=path, interface=interface, member=member,
                                     signature=signature, body=body or [], sender=sender,
                                     serial=serial))
        settle()
        return self.reply(serial)

    def reply(self, serial: int) -> Message:
        return next(m for m in self.sent if m.reply_serial == serial)

    def signals(self) -> list[tuple[str, str, list[Any]]]:
        return [(m.path, m.member, m.body) for m in self.sent
                if m.message_type is MessageType.SIGNAL]

    def close(self) -> None:
        self.bus._sock.close()
        self.listener.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # dbus-next's MessageBus takes the current loop
    h = Harness(tmp_path)
    yield h
    h.close()
    left = asyncio.all_tasks(loop)  # the service's periodic usage watch
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    loop.close()
    asyncio.set_event_loop(None)


def settle() -> None:
    """Let the tasks of the calls delivered so far run to their replies."""
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))


def served(h: Harness, manager: StubManager) -> Service:
    svc = Service(h.bus, manager, RootOnly())  # type: ignore[arg-type]
    svc.export_all()
    return svc


def test_objects_exported_before_the_name_is_owned_are_not_announced(harness: Harness) -> None:
    manager = StubManager(*(Record(name=f"o{i}") for i in range(300)))
    served(harness, manager)
    assert harness.sent == [], "no InterfacesAdded while nobody can be subscribed"
    assert len(harness.bus._path_exports) == 301


def test_objects_follow_the_manager(harness: Harness) -> None:
    manager = StubManager()
    svc = served(harness, manager)
    path = ROOT + "/overlay/new_2done"
    manager.change("new-one", Record(name="new-one"))
    ((where, member, (obj, ifaces)), total) = harness.signals()
    assert (where, member, obj) == (ROOT, "InterfacesAdded", path)
    assert ifaces["org.overlayd.Overlayd1.Overlay"]["State"] == Variant("s", "active")
    assert total == (ROOT, "PropertiesChanged", ["org.overlayd.Overlayd1.Manager", {
        "UpperSizeTotal": Variant("t", 64 << 20)}, []]), "the RAM reserved grew"
    harness.sent.clear()
    manager.change("new-one", replace(Record(name="new-one"), state=OverlayState.COMMITTING))
    manager.change("new-one", replace(Record(name="new-one"), state=OverlayState.COMMITTING))
    assert harness.signals() == [(path, "PropertiesChanged", [
        "org.overlayd.Overlayd1.Overlay", {"State": Variant("s", "committing")}, []])], \
        "only what changed, once"
    harness.sent.clear()
    manager.change("new-one", None)
    assert harness.signals() == [
        (ROOT, "InterfacesRemoved", [path, ["org.overlayd.Overlayd1.Overlay"]]),
        (ROOT, "PropertiesChanged", ["org.overlayd.Overlayd1.Manager",
                                     {"UpperSizeTotal": Variant("t", 0)}, []])]
    assert path not in harness.bus._path_exports and svc.objects == {}


def test_a_resize_announces_the_overlay_and_the_total(harness: Harness) -> None:
    """Reconfigure's new size changes UpperSize and the Manager's UpperSizeTotal: both are
    announced (the total used to move only when an overlay came or went)."""
    manager = StubManager(Record(name="a"))
    served(harness, manager)
    manager.change("a", replace(Record(name="a"), size=128 << 20, upper=Upper(size=128 << 20)))
    assert harness.signals() == [
        (ROOT + "/overlay/a", "PropertiesChanged", [
            "org.overlayd.Overlayd1.Overlay", {"UpperSize": Variant("t", 128 << 20)}, []]),
        (ROOT, "PropertiesChanged", ["org.overlayd.Overlayd1.Manager",
                                     {"UpperSizeTotal": Variant("t", 128 << 20)}, []])]


def test_a_reload_that_changes_max_total_size_announces_it(harness: Harness) -> None:
    """MaxTotalSize follows a SIGHUP reload of overlayd.conf: announced when it changes,
    not declared const."""
    manager = StubManager(Record(name="a"))
    svc = served(harness, manager)
    svc.config_changed()
    assert harness.signals() == [], "the same limit: nothing to say"
    manager.total_limit = lambda: 8 << 30  # type: ignore[method-assign]
    svc.config_changed()
    assert harness.signals() == [(ROOT, "PropertiesChanged", [
        "org.overlayd.Overlayd1.Manager", {"MaxTotalSize": Variant("t", 8 << 30)}, []])]


def test_get_all_and_managed_objects_give_the_same_values(harness: Harness) -> None:
    manager = StubManager(Record(name="a"), Record(name="b", owner_uid=0))
    served(harness, manager)
    (objects,) = harness.call(ROOT, "GetManagedObjects",
                              "org.freedesktop.DBus.ObjectManager").body
    assert sorted(objects) == [ROOT + "/overlay/a", ROOT + "/overlay/b"]
    for path, ifaces in objects.items():
        (values,) = harness.call(path, "GetAll", "org.freedesktop.DBus.Properties", "s",
                                 ["org.overlayd.Overlayd1.Overlay"]).body
        assert values == ifaces["org.overlayd.Overlayd1.Overlay"]


def test_a_call_without_an_interface_finds_the_method(harness: Harness) -> None:
    served(harness, StubManager(Record(name="a")))
    reply = harness.call(ROOT, "ListOverlays")
    assert reply.message_type is MessageType.METHOD_RETURN
    assert reply.body == [[["a", ROOT + "/overlay/a"]]]
    state = harness.call(ROOT + "/overlay/a", "Get", None, "ss",
                         ["org.overlayd.Overlayd1.Overlay", "State"])
    assert state.body == [Variant("s", "active")]
    unknown = harness.call(ROOT, "Explode")
    assert unknown.error_name == "org.freedesktop.DBus.Error.UnknownMethod"
    assert unknown.body == [f"There is no method 'Explode' at {ROOT}."]


def test_wrong_argument_types_are_invalid_args(harness: Harness) -> None:
    served(harness, StubManager())
    reply = harness.call(ROOT, "GetOverlay", "org.overlayd.Overlayd1.Manager", "u", [3])
    assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert reply.body == ["GetOverlay() takes arguments of type 's', not 'u'."]


class Slow(CheapInterface):
    def __init__(self) -> None:
        super().__init__("org.example.Slow")
        self.go = asyncio.Event()

    @method()
    async def Wait(self) -> s:  # noqa: F821 (a D-Bus signature, read by dbus-next)
        await self.go.wait()
        return "done"


def test_a_client_has_a_bounded_number_of_calls_running(harness: Harness) -> None:
    slow = Slow()
    harness.bus.export_object("/slow", slow, announce=False)
    for i in range(MAX_CALLS_IN_FLIGHT):
        harness.bus._on_message(Message(path="/slow", interface="org.example.Slow",
                                        member="Wait", sender=":1.7", serial=i + 1))
    settle()
    assert harness.sent == [] and harness.bus.in_flight == {":1.7": MAX_CALLS_IN_FLIGHT}
    refused = harness.call("/slow", "Wait", "org.example.Slow", sender=":1.7")
    assert refused.error_name == "org.freedesktop.DBus.Error.LimitsExceeded"
    assert str(MAX_CALLS_IN_FLIGHT) in refused.body[0]
    harness.bus._on_message(Message(path="/slow", interface="org.example.Slow",
                                    member="Wait", sender=":1.8", serial=5000))
    slow.go.set()
    settle()
    assert harness.reply(5000).body == ["done"], "other clients are served"
    assert sum(m.body == ["done"] for m in harness.sent) == MAX_CALLS_IN_FLIGHT + 1
    assert harness.bus.in_flight == {}


# -- the writer ------------------------------------------------------------------------------

class FakeBus:
    """What the writer uses of a MessageBus."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._negotiate_unix_fd = False
        self._disconnected = False
        self.unique_name = ":1.1"
        self.failures: list[Exception] = []

    def _finalize(self, err: Exception) -> None:
        self._disconnected = True
        self.failures.append(err)


def message(i: int, *, reply_to: str | None = None, size: int = 1000) -> Message:
    if reply_to is None:
        return Message.new_signal("/o", "org.example.I", "S", "s", [str(i) * size])
    msg = Message(destination=reply_to, message_type=MessageType.METHOD_RETURN,
                  reply_serial=i, signature="s", body=["r" * size], serial=i)
    return msg


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, asyncio.AbstractEventLoop]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loop = asyncio.new_event_loop()
    yield ours, theirs, loop
    loop.close()
    ours.close()
    theirs.close()


def test_a_full_socket_is_waited_for(
        pair: tuple[socket.socket, socket.socket, asyncio.AbstractEventLoop]) -> None:
    """dbus-next's own writer took EAGAIN for a lost connection."""
    ours, theirs, loop = pair
    bus = FakeBus(ours, loop)
    writer = Writer(bus)
    msgs = [message(i, size=2000) for i in range(1, 400)]
    for i, m in enumerate(msgs):
        m.serial = i + 1
        writer.schedule_write(m)
    assert bus.failures == [] and writer.watching and writer.queue, "the socket is full"
    expected = b"".join(m._marshall() for m in msgs)

    async def read_all() -> bytes:
        got = b""
        theirs.setblocking(False)
        while len(got) < len(expected):
            try:
                got += theirs.recv(1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        return got

    assert loop.run_until_complete(read_all()) == expected, "all of it, in order"
    assert bus.failures == [] and not writer.watching and not writer.queue


def drain(sock: socket.socket, writer: Writer, loop: asyncio.AbstractEventLoop) -> None:
    """Read what the writer sends until its queue is empty."""
    sock.setblocking(False)

    async def read() -> None:
        while writer.queue:
            try:
                sock.recv(1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.001)

    loop.run_until_complete(read())


def test_replies_waiting_for_one_client_are_bounded(
        pair: tuple[socket.socket, socket.socket, asyncio.AbstractEventLoop],
        caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs, loop = pair
    bus = FakeBus(ours, loop)
    writer = Writer(bus, limit=64 << 10)
    sent: dict[str, list[asyncio.Future[None]]] = {":1.9": [], ":1.10": [], "signal": []}
    with caplog.at_level(logging.WARNING, "overlayd.bus"):
        for i in range(1, 300):  # far more than the socket takes
            for client, msg in ((":1.9", message(i, reply_to=":1.9")),
                                (":1.10", message(i, reply_to=":1.10", size=10)),
                                ("signal", message(i))):
                sent[client].append(loop.create_future())
                writer.schedule_write(msg, sent[client][-1])
    assert writer.backlog[":1.9"] <= 64 << 10, "what waits for the flooder is bounded"
    assert caplog.text.count("Dropping replies to :1.9") == 1, "said once"
    drain(theirs, writer, loop)
    dropped = {k: sum(f.cancelled() for f in futs) for k, futs in sent.items()}
    assert dropped[":1.9"] > 200 and dropped[":1.10"] == 0 and dropped["signal"] == 0
    assert all(f.done() for futs in sent.values() for f in futs)
    assert writer.backlog == {} and writer.dropping == set() and bus.failures == []
    # Once its backlog cleared, the flooder's replies are taken again.
    again = loop.create_future()
    writer.schedule_write(message(1000, reply_to=":1.9"), again)
    assert not again.cancelled()


def test_a_reply_bigger_than_the_limit_still_goes(
        pair: tuple[socket.socket, socket.socket, asyncio.AbstractEventLoop]) -> None:
    ours, theirs, loop = pair
    writer = Writer(FakeBus(ours, loop), limit=1000)
    big = loop.create_future()
    writer.schedule_write(message(1, reply_to=":1.9", size=100_000), big)
    drain(theirs, writer, loop)
    assert big.done() and not big.cancelled()


def test_a_broken_socket_is_a_lost_connection(
        pair: tuple[socket.socket, socket.socket, asyncio.AbstractEventLoop]) -> None:
    ours, theirs, loop = pair
    bus = FakeBus(ours, loop)
    writer = Writer(bus)
    fut = loop.create_future()
    theirs.close()
    writer.schedule_write(message(1), fut)
    assert len(bus.failures) == 1 and isinstance(bus.failures[0], OSError)
    assert fut.cancelled() and not writer.queue


class RootStub(StubManager):
    """A manager whose overlay 'root' may have a commit at shutdown asked for."""

    at_shutdown = False

    def commit_at_shutdown(self, name: str) -> bool:
        return name == "root" and self.at_shutdown


def test_a_commit_at_shutdown_is_signalled(harness: Harness) -> None:
    manager = RootStub(Record(name="root"))
    served(harness, manager)
    (root_overlay,) = harness.call(ROOT, "Get", "org.freedesktop.DBus.Properties", "ss",
                                   ["org.overlayd.Overlayd1.Manager", "RootOverlay"]).body
    assert root_overlay == Variant("o", ROOT + "/overlay/root")
    manager.at_shutdown = True
    manager.change("root", Record(name="root"))  # what the manager does when asked
    assert harness.signals() == [(ROOT + "/overlay/root", "PropertiesChanged", [
        "org.overlayd.Overlayd1.Overlay", {"CommitAtShutdown": Variant("b", True)}, []])]


def test_the_usage_sweep_gives_the_loop_back_and_skips_what_went(harness: Harness) -> None:
    from overlayd.bus.usage import LOOKS_PER_TURN

    manager = StubManager(*(Record(name=f"o{i:03d}") for i in range(2 * LOOKS_PER_TURN + 5)))
    svc = served(harness, manager)
    svc.usage.levels.clear()
    manager.usage_reads = 0
    seen: list[int] = []

    async def meanwhile() -> None:  # a call served between two turns
        seen.append(manager.usage_reads)
        manager.change("o104", None)  # discarded while the sweep waits for its next turn

    asyncio.get_event_loop().run_until_complete(
        asyncio.gather(svc.usage.look_at_all(), meanwhile()))
    assert seen == [LOOKS_PER_TURN], "one turn, then the loop is free"
    assert "o104" not in svc.usage.levels and len(svc.usage.levels) == 2 * LOOKS_PER_TURN + 4
