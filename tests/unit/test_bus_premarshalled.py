"""GetManagedObjects from entries marshalled before (bus/premarshalled.py, connection.py): the
joined bytes are what dbus-next marshals in one piece, and the reply served from the
bus's kept entries equals a fresh one after every kind of change."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dbus_next import Message, Variant
from dbus_next._private.marshaller import Marshaller

from overlayd.bus.jobs import JOB_PROPERTIES, JobInterface, JobRunner
from overlayd.bus.objects import PROPERTIES
from overlayd.bus.premarshalled import MarshalledReturn, dict_array, dict_entry
from overlayd.bus.properties import BusProperty
from overlayd.jobs import Job
from overlayd.model import Layer, OverlayState, UpperUsage
from overlayd.usage import UsageLevel
from tests.unit import test_bus_connection
from tests.unit.test_bus_connection import ROOT, Harness, served
from tests.unit.test_bus_objects import Record, StubManager

harness = test_bus_connection.harness  # the fixture: a bus whose sends are kept
SIGNATURE = "a{oa{sa{sv}}}"
OM = "org.freedesktop.DBus.ObjectManager"


def one_piece(body: list[Any]) -> bytes:
    m = Marshaller(SIGNATURE, body)
    m.marshall()
    return bytes(m.buffer)


def joined(objects: dict[str, Any]) -> bytes:
    return dict_array([dict_entry(SIGNATURE[2:-1], p, v) for p, v in objects.items()])


def test_joined_entries_are_what_one_piece_is() -> None:
    # paths of every length modulo 8, values of every alignment, empty dicts
    objects: dict[str, Any] = {}
    for n in range(1, 18):
        objects["/o/" + "x" * n] = {"a.B" + "c" * (n % 5): {
            "Y": Variant("y", n), "T": Variant("t", 1 << 40), "D": Variant("d", 0.5),
            "S" * n: Variant("s", "é" * n), "As": Variant("as", ["a"] * (n % 3)),
            "Q": Variant("q", 7), "B": Variant("b", n % 2 == 0)}}
    objects["/empty"] = {}
    objects["/empty/props"] = {"a.B": {}}
    assert joined(objects) == one_piece([objects])
    assert joined({}) == one_piece([{}])
    assert joined({"/a": {}}) == one_piece([{"/a": {}}])


def test_a_marshalled_return_is_the_message_dbus_next_makes() -> None:
    call = Message(path="/", interface=OM, member="GetManagedObjects", serial=7,
                   sender=":1.42")
    objects = {"/p": {"a.B": {"X": Variant("s", "y")}}}
    ours = MarshalledReturn(call, SIGNATURE, joined(objects))
    theirs = Message.new_method_return(call, SIGNATURE, [objects])
    ours.serial = theirs.serial = 99
    assert ours._marshall() == theirs._marshall()
    assert ours.body == [objects], "decoded when read"
    anonymous = Message(path="/", member="GetManagedObjects", serial=8)  # no sender
    ours = MarshalledReturn(anonymous, SIGNATURE, joined(objects))
    theirs = Message.new_method_return(anonymous, SIGNATURE, [objects])
    ours.serial = theirs.serial = 100
    assert ours._marshall() == theirs._marshall()


class LiveManager(StubManager):
    """A stub whose live usage and commit-at-shutdown flag the test changes."""

    def __init__(self, *records: Record) -> None:
        super().__init__(*records)
        self.used: dict[str, int] = {}
        self.at_shutdown: set[str] = set()

    def usage_now(self, name: str) -> UpperUsage:
        self.usage_reads += 1
        return UpperUsage(size=self.get(name).size, used=self.used.get(name, 0),
                          inodes_used=1)

    def commit_at_shutdown(self, name: str) -> bool:
        return name in self.at_shutdown


def fresh(h: Harness, path: str = ROOT) -> bytes:
    """GetManagedObjects of PATH marshalled in one piece, from property_values()."""
    nodes = {p: {i.name: i.property_values() for i in ifaces}
             for p, ifaces in h.bus._path_exports.items() if p.startswith(path + "/")}
    return one_piece([nodes])


def served_reply(h: Harness, path: str = ROOT) -> MarshalledReturn:
    reply = h.call(path, "GetManagedObjects", OM)
    assert isinstance(reply, MarshalledReturn)
    return reply


def test_the_kept_reply_equals_a_fresh_one_after_every_kind_of_change(harness: Harness
                                                                      ) -> None:
    h = harness
    manager = LiveManager(*(Record(name=f"o{i}") for i in range(5)))
    svc = served(h, manager)
    path = ROOT + "/overlay/o1"

    def same() -> None:
        assert served_reply(h).marshalled_body == fresh(h)

    same()
    kept = {p: m.entry for p, m in h.bus.marshalled.items()}
    same()
    assert all(h.bus.marshalled[p].entry is e for p, e in kept.items()), "nothing re-made"
    changes = [
        lambda: manager.change("o1", replace(manager.get("o1"), state=OverlayState.COMMITTING)),
        lambda: manager.change("o1", replace(manager.get("o1"), loop_device="/dev/loop9")),
        lambda: manager.change("o1", replace(manager.get("o1"), error="it failed")),
        lambda: manager.change("o1", replace(manager.get("o1"), half_committed=True)),
        lambda: manager.change("o1", replace(manager.get("o1"), layers=(Layer(path="/l1"),))),
        lambda: manager.change("o1", replace(manager.get("o1"), layers=(
            Layer(path="/l1"), Layer(path="/l2")))),
        lambda: manager.used.__setitem__("o1", 4096),  # a write: a LIVE property
        lambda: manager.used.__setitem__("o1", 8192),
        lambda: svc.usage.levels.__setitem__("o1", UsageLevel.HIGH),
        lambda: manager.at_shutdown.add("o1"),
        lambda: manager.change("o9", Record(name="o9")),  # a new object
        lambda: manager.change("o2", None),  # one gone
        lambda: manager.change("o2", Record(name="o2", image="/srv/other.img")),  # back
        lambda: manager.records.pop("o3"),  # gone from the manager, not yet from the bus
    ]
    for change in changes:
        change()
        same()
        assert h.bus.marshalled[ROOT + "/overlay/o0"].entry is kept[ROOT + "/overlay/o0"], \
            "an object that did not change is not marshalled again"
    assert path in h.bus.marshalled and ROOT + "/overlay/o2" in h.bus.marshalled
    # a job is an object of its own: exported, changing, and gone
    runner = object.__new__(JobRunner)
    job = JobInterface(runner, Job(1, "commit", "o1", 0, 1_700_000_000_000_000))
    h.bus.export_object(job.path, job, announce=False)
    same()
    job.status = replace(job.status, bytes=1 << 20, progress=0.25)
    same()
    h.bus.unexport_object(job.path, job)
    same()
    assert job.path not in h.bus.marshalled, "what is unexported is forgotten"
    assert served_reply(h, ROOT + "/overlay").marshalled_body == fresh(h, ROOT + "/overlay")
    everything = {p: {i.name: i.property_values() for i in ifaces}  # the Manager too
                  for p, ifaces in h.bus._path_exports.items()}
    assert served_reply(h, "/").marshalled_body == one_piece([everything])


def test_a_new_property_row_needs_nothing_more(harness: Harness, monkeypatch: Any) -> None:
    """Another row in the table (as other branches add): its value is kept and compared
    like the others."""
    from overlayd.bus import objects

    extra = BusProperty("Zeta", "s", "true", lambda r: r.rec.image + "!")
    monkeypatch.setattr(objects.OverlayInterface, "property_table", (*PROPERTIES, extra))
    manager = LiveManager(Record(name="a"))
    served(harness, manager)
    assert served_reply(harness).marshalled_body == fresh(harness)
    manager.change("a", replace(manager.get("a"), image="/srv/new.img"))
    reply = served_reply(harness)
    assert reply.marshalled_body == fresh(harness)
    (objects_,) = reply.body
    assert objects_[ROOT + "/overlay/a"]["org.overlayd.Overlayd1.Overlay"]["Zeta"] == \
        Variant("s", "/srv/new.img!")


def test_container_rows_read_new_values() -> None:
    """The bus keeps the last values to compare with: a row may not hand out a list it
    changes later in place."""
    from overlayd.bus.objects import Reading

    manager = LiveManager(Record(layers=(Layer(path="/l"),)))
    reading = Reading(manager, manager.get("demo"))  # type: ignore[arg-type]
    for p in PROPERTIES:
        if p.signature[0] in "a({":
            assert p.read(reading) is not p.read(reading), p.name
    job = JobInterface(object.__new__(JobRunner), Job(1, "commit", "o", 0, 1))
    for q in JOB_PROPERTIES:
        if q.signature[0] in "a({":
            assert q.read(job) is not q.read(job), q.name
