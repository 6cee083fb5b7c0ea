"""Jobs without a bus: the pure model (progress, rate, the cancel token, how often it
wakes the event loop), UpperUsage levels and their settings, a cancelled commit on
FakeHost, and the applier stopped by its progress callback on a real directory tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import DaemonConfig, load_config
from overlayd.errors import Cancelled, InvalidSpec
from overlayd.host import merge
from overlayd.jobs import ENTRY_WEIGHT, PROGRESS_INTERVAL, CancelToken, Job, Jobs
from overlayd.model import OverlayState, UpperUsage
from overlayd.usage import UsageLevel, level
from tests.unit.test_engine_fake import manager, new_host, run, spec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job(**kw: Any) -> Job:
    return Job(1, "commit", "demo", 0, 1_700_000_000_000_000, **kw)


# -- the cancel token -----------------------------------------------------------------------

def test_a_cancel_asked_is_honoured_at_the_next_safe_point() -> None:
    t = CancelToken()
    t.check()  # nothing asked
    assert t.cancel() and t.cancel(), "asking twice is fine"
    with pytest.raises(Cancelled):
        t.check()


def test_after_the_seal_a_cancel_is_refused_never_dropped() -> None:
    sealed: list[bool] = []
    t = CancelToken()
    t.on_seal = lambda: sealed.append(True)
    t.seal()
    assert sealed == [True] and not t.cancel() and not t.asked
    t2 = CancelToken()
    assert t2.cancel()
    with pytest.raises(Cancelled):
        t2.seal()  # asked before the last safe point: honoured there
    assert t2.cancel(), "it was accepted; asking again says so"


# -- progress, rate, and how often the loop is woken ------------------------------------------

def test_progress_weighs_bytes_and_entries_and_reaches_1_only_on_success() -> None:
    j = job()
    assert j.fraction() == 0.0 and not j.status(0, 0).progress_valid
    j.begin(total_bytes=1000 * ENTRY_WEIGHT, total_entries=1000)
    j.report(500, 0)  # half the entries, no data
    assert j.fraction() == pytest.approx(0.25)
    j.report(1000, 1000 * ENTRY_WEIGHT)
    assert j.fraction() == 0.99, "an estimate: never 1.0 while running"
    j.finish(True)
    s = j.status(0, 5)
    assert (s.progress, s.cancelable, s.expected_end_usec) == (1.0, False, 5)
    failed = job()
    failed.begin(100, 1)
    failed.finish(False)
    assert failed.fraction() == 0.0


def test_rate_and_expected_end_come_from_the_samples() -> None:
    clock = Clock()
    j = job(clock=clock)
    j.begin(total_bytes=100 << 20, total_entries=0)
    assert j.status(clock.now, 0).rate == 0
    clock.now += 1.0
    j.report(0, 25 << 20)
    s = j.status(clock.now, 1_000_000)
    assert s.rate == 25 << 20
    assert s.expected_end_usec == 1_000_000 + 3_000_000  # 75 % left at 25 % a second
    assert s.progress_valid and s.cancelable and s.bytes == 100 << 20


def test_report_wakes_the_loop_a_few_times_a_second_whatever_the_files() -> None:
    clock = Clock()
    woken: list[float] = []
    j = job(clock=clock, notify=lambda: woken.append(clock.now))
    j.begin(1 << 30, 1_000_000)
    for i in range(1_000_000):  # a million entries in 10 seconds
        clock.now += 1e-5
        j.report(i + 1, i)
    assert len(woken) <= 10 / PROGRESS_INTERVAL + 1
    assert j.entries == 1_000_000


def test_report_raises_once_cancelled() -> None:
    j = job()
    j.report(1, 1)
    j.token.cancel()
    with pytest.raises(Cancelled):
        j.report(2, 2)


def test_jobs_are_numbered_from_1() -> None:
    jobs = Jobs()
    a = jobs.start("commit", "x", 0, 1)
    b = jobs.start("commit", "y", 1000, 2)
    assert (a.id, b.id) == (1, 2) and jobs.of_overlay("y") == [b]
    jobs.end(a)
    assert jobs.running() == [b] and jobs.get(1) is None
    assert jobs.start("commit", "x", 0, 3).id == 3, "never reused"


# -- UpperUsage -----------------------------------------------------------------------------

@pytest.mark.parametrize(("used", "want"), [
    (0, UsageLevel.OK), (79, UsageLevel.OK), (80, UsageLevel.HIGH), (94, UsageLevel.HIGH),
    (95, UsageLevel.CRITICAL), (99, UsageLevel.CRITICAL), (100, UsageLevel.FULL),
])
def test_usage_levels(used: int, want: UsageLevel) -> None:
    assert level(UpperUsage(size=100, used=used, inodes_used=1), DaemonConfig()) is want


def test_usage_thresholds_are_settings(tmp_path: Path) -> None:
    conf = tmp_path / "overlayd.conf"
    conf.write_text("usage_high = 50\nusage_critical = 60\nusage_interval = 0.5\n")
    cfg = load_config(conf)
    assert level(UpperUsage(size=100, used=55, inodes_used=1), cfg) is UsageLevel.HIGH
    assert cfg.usage_interval == 0.5
    conf.write_text("usage_high = 90\nusage_critical = 80\n")
    with pytest.raises(InvalidSpec, match=r"usage_high .90. must not be above usage_critical"):
        load_config(conf)
    conf.write_text("usage_critical = 101\n")
    with pytest.raises(InvalidSpec, match="usage_critical"):
        load_config(conf)


# -- a cancelled commit on FakeHost -----------------------------------------------------------

def test_a_commit_cancelled_half_way_keeps_everything_and_can_be_finished() -> None:
    host = new_host()
    mgr = manager(host)
    token = CancelToken()
    seen: list[int] = []

    def progress(entries: int, nbytes: int) -> None:
        seen.append(entries)
        if entries == 2:
            token.cancel()
        token.check()

    async def go() -> None:
        await mgr.start()
        rec = await mgr.create(spec())
        host.write_upper(str(mgr.store.layout(rec.name).upper_mount), "a", "b", "c", "d")
        with pytest.raises(Cancelled, match="holds part of them"):
            await mgr.commit("demo", progress=progress, cancel=token)
        rec = mgr.get("demo")
        assert rec.state is OverlayState.ACTIVE and rec.half_committed
        assert "cancelled" in rec.error
        assert sorted(m.fstype for m in host.mount_table) == ["ext4", "overlay", "tmpfs"]
        await mgr.commit("demo")  # committing again finishes the job
        assert not mgr.get("demo").half_committed

    run(go())
    assert seen == [1, 2]


def test_a_commit_cancelled_before_its_turn_changes_nothing() -> None:
    host = new_host()
    mgr = manager(host)
    token = CancelToken()
    started: list[bool] = []

    async def go() -> None:
        await mgr.start()
        await mgr.create(spec())
        host.calls.clear()
        token.cancel()
        with pytest.raises(Cancelled, match="before it started; nothing changed"):
            await mgr.commit("demo", cancel=token, started=lambda: started.append(True))
        rec = mgr.get("demo")
        assert rec.state is OverlayState.ACTIVE and not rec.half_committed

    run(go())
    assert started == [True]
    assert not [c for c in host.calls if c.startswith(("unmount", "apply"))]


# -- the applier, stopped by its progress callback -------------------------------------------

def _tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("where", ["between entries", "inside a large file"])
def test_the_apply_stops_at_a_safe_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         where: str) -> None:
    monkeypatch.setattr(merge, "CHUNK", 4096)
    big = os.urandom(5 * 4096)
    upper = _tree(tmp_path / "upper", {"a": b"new a", "b": big, "c": b"new c"})
    lower = _tree(tmp_path / "lower", {"b": b"old b", "c": b"old c"})
    calls: list[tuple[int, int]] = []

    def progress(entries: int, nbytes: int) -> None:
        calls.append((entries, nbytes))
        if (where == "between entries" and entries == 2) or \
                (where == "inside a large file" and entries == 1 and nbytes > 5):
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        merge.apply_upper(str(upper), str(lower), progress)
    names = sorted(os.listdir(lower))
    assert names == ["a", "b", "c"], "no temporary left behind"
    assert (lower / "a").read_bytes() == b"new a"
    assert (lower / "b").read_bytes() == (big if where == "between entries" else b"old b")
    assert (lower / "c").read_bytes() == b"old c"
    if where == "inside a large file":
        assert calls[-1][0] == 1 and 5 < calls[-1][1] < 5 + len(big), "within b"
    # The next apply over the same upper finishes the job.
    merge.apply_upper(str(upper), str(lower))
    assert (lower / "b").read_bytes() == big and (lower / "c").read_bytes() == b"new c"


# -- the Job interface: the property table is the contract ----------------------------------

def test_the_job_property_table_is_the_xml() -> None:
    from xml.etree import ElementTree as ET

    from overlayd.bus.jobs import JOB_PROPERTIES, JobInterface, JobRunner

    xml = (Path(__file__).resolve().parents[2] / "dbus/org.overlayd.Overlayd1.Job.xml")
    iface = next(i for i in ET.parse(xml).getroot().iter("interface")
                 if i.get("name") == "org.overlayd.Overlayd1.Job")

    def emits(p: ET.Element) -> str:
        a = p.find("annotation")
        return a.get("value", "true") if a is not None else "true"

    written = {p.get("name"): (p.get("type"), emits(p)) for p in iface.findall("property")}
    assert written == {p.name: (p.signature, p.changes) for p in JOB_PROPERTIES}
    obj = JobInterface(object.__new__(JobRunner), job())
    live = obj.introspect()
    assert {p.name for p in live.properties} == set(written)
    assert [(s.name, [a.name for a in s.args]) for s in live.signals] == \
        [("Completed", ["success", "message"])]
    values = obj.property_values()
    assert values["Objects"].value == ["/org/overlayd/Overlayd1/overlay/demo"]
    assert values["ProgressValid"].value is False and values["Cancelable"].value is True


# --- SpaceCache: the images' free space, read once per file system per interval -----------

def test_the_space_of_a_file_system_is_read_once_per_interval() -> None:
    from overlayd.usage import SpaceCache
    reads: list[str] = []
    now = [100.0]

    def read(path: str) -> tuple[int, int]:
        reads.append(path)
        return 1000, 100 * len(reads)

    cache = SpaceCache(read, lambda: now[0], ttl=2.0)
    assert [cache.get("/a") for _ in range(50)] == [(1000, 100)] * 50
    assert cache.get("/b") == (1000, 200)
    assert reads == ["/a", "/b"], "one read per file system, however many overlays ask"
    now[0] += 2.0
    assert cache.get("/a") == (1000, 300), "read again after the interval"
    cache.forget("/a")  # a commit wrote into it
    assert cache.get("/a") == (1000, 400)
    assert reads == ["/a", "/b", "/a", "/a"]
