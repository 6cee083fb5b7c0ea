"""A kill -9 after every step of Create, Commit and Discard, on FakeHost: the restarted
daemon loses no write, leaks no mount, loop device, file or directory, and wedges no
name. (tests/kernel/test_crash.py kills the real thing on the real kernel.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import DaemonConfig
from overlayd.host.fake import Crashed, FakeHost
from overlayd.manager import OverlayManager
from overlayd.model import CommitTarget, OverlayState, parse_spec

IMG = "/srv/disk.img"
IMG2 = "/srv/other.img"
RUN = "/run/overlayd"
LAYERS = "/var/lib/overlayd/layers"
WRITES = {"a.txt", "b.txt", "c.txt"}


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def daemon(host: FakeHost) -> OverlayManager:
    mgr = OverlayManager(DaemonConfig(runtime_dir=Path(RUN)), host)
    run(mgr.start())
    return mgr


def new_host() -> FakeHost:
    host = FakeHost(image_fstypes={IMG: "ext4", IMG2: "ext4"})
    host.dirs.add(RUN)
    return host


def with_writes(host: FakeHost) -> OverlayManager:
    mgr = daemon(host)
    run(mgr.create(parse_spec({"name": "demo", "image": IMG})))
    host.write_upper(f"{RUN}/demo/rw", *WRITES)
    return mgr


def with_sharer(host: FakeHost) -> OverlayManager:
    """Another overlay of the same image is live: the lower is shared."""
    mgr = daemon(host)
    run(mgr.create(parse_spec({"name": "other", "image": IMG})))
    return mgr


def with_writes_and_sharer(host: FakeHost) -> OverlayManager:
    mgr = with_writes(host)
    run(mgr.create(parse_spec({"name": "other", "image": IMG})))
    return mgr


Setup = Callable[[FakeHost], OverlayManager]
Act = Callable[[OverlayManager], Coroutine[Any, Any, Any]]

PROCEDURES: dict[str, tuple[Setup, Act]] = {
    "create": (daemon, lambda m: m.create(parse_spec({"name": "demo", "image": IMG}))),
    "commit": (with_writes, lambda m: m.commit("demo")),
    "discard": (with_writes, lambda m: m.discard("demo")),
    "discard-force": (with_writes, lambda m: m.discard("demo", force=True)),
    # Issue 11: the shared lower's reference count under a kill at every step.
    "create-shared": (with_sharer,
                      lambda m: m.create(parse_spec({"name": "demo", "image": IMG}))),
    "discard-shared": (with_writes_and_sharer, lambda m: m.discard("demo")),
    "commit-after-sharer": (with_writes_and_sharer, lambda m: _commit_alone(m)),
    # Issue 14: a commit to a layer, alone, on a shared image, and as a second layer.
    "commit-layer": (with_writes, lambda m: m.commit("demo", target=CommitTarget.LAYER)),
    "commit-layer-shared": (with_writes_and_sharer,
                            lambda m: m.commit("demo", target=CommitTarget.LAYER)),
    "commit-layer-second": (lambda h: with_a_layer(h),
                            lambda m: m.commit("demo", target=CommitTarget.LAYER)),
    # Squash (two layers into one, MORE2 still in RAM) and Revert (the top layer goes).
    "squash": (lambda h: with_two_layers(h, more=True), lambda m: m.squash("demo")),
    "revert": (lambda h: with_two_layers(h, more=False), lambda m: m.revert("demo")),
    "squash-into-image": (lambda h: with_two_layers(h, more=True),
                          lambda m: m.squash("demo", target=CommitTarget.IMAGE)),
}

MORE2 = {"f.txt"}


def with_two_layers(host: FakeHost, *, more: bool) -> OverlayManager:
    mgr = with_a_layer(host)
    run(mgr.commit("demo", target=CommitTarget.LAYER))
    if more:
        host.write_upper(f"{RUN}/demo/rw", *MORE2)
    return mgr

MORE = {"d.txt", "e.txt"}


def with_a_layer(host: FakeHost) -> OverlayManager:
    """One layer stacked already (holding WRITES), and more writes in RAM."""
    mgr = with_writes(host)
    run(mgr.commit("demo", target=CommitTarget.LAYER))
    host.write_upper(f"{RUN}/demo/rw", *MORE)
    return mgr


async def _commit_alone(m: OverlayManager) -> None:
    """The other overlay of the image goes, then the commit runs."""
    await m.discard("other")
    await m.commit("demo")


def steps_of(proc: str) -> int:
    setup, act = PROCEDURES[proc]
    host = new_host()
    mgr = setup(host)
    host.calls.clear()
    run(act(mgr))
    return len(host.calls)


CASES = [(p, k) for p in PROCEDURES for k in range(1, steps_of(p) + 1)]


def shared_lowers_in_use(mgr: OverlayManager) -> set[str]:
    return {f"{RUN}/.lowers/{r.lowers[0].dev}-{r.lowers[0].ino}" for r in mgr.list()
            if r.lowers[0].shared}


def check_nothing_leaked(host: FakeHost, mgr: OverlayManager) -> None:
    live = {r.name for r in mgr.list()}
    lowers = shared_lowers_in_use(mgr)
    for m in host.mount_table:
        if m.target.startswith(f"{RUN}/.lowers/"):
            assert m.target in lowers, f"{m.target} is left mounted with no overlay"
            continue
        owner = m.source.removeprefix("overlayd-") if m.source.startswith("overlayd-") else \
            m.target.removeprefix(RUN + "/").split("/")[0]
        assert owner in live, f"{m.target} ({m.source}) is left mounted with no overlay"
    in_use = {m.source for m in host.mount_table}
    assert set(host.loops) <= in_use, "a loop device is left attached"
    held = {(r.lowers[0].dev, r.lowers[0].ino) for r in mgr.list()}
    assert host.locked == held, "an image lock is left (or missing)"
    for d in host.dirs:
        if d.startswith(f"{RUN}/.lowers/"):
            assert d in lowers, f"{d} is left"
            continue
        if d == f"{RUN}/.lowers":
            continue  # shared, like the mount root
        if d.startswith(RUN + "/") and not d.startswith(RUN + "/mnt"):
            assert d.removeprefix(RUN + "/").split("/")[0] in live, f"{d} is left"
        if d.startswith(RUN + "/mnt/"):
            assert d.removeprefix(RUN + "/mnt/") in live, f"{d} is left"
    stacked = {layer.path for r in mgr.list() for layer in r.layers}
    for f in host.file_data:
        if f.startswith(LAYERS + "/"):
            # No half layer, and none that a live overlay of that name does not stack.
            assert not f.endswith(".tmp"), f"the half-made layer {f} is left"
            owner = f.removeprefix(LAYERS + "/").split("/")[0]
            assert owner not in live or f in stacked, f"the unstacked layer {f} is left"
            continue
        assert f.removeprefix(RUN + "/").split("/")[0] in live, f"{f} is left"


def writes_kept(host: FakeHost, mgr: OverlayManager) -> set[str]:
    """Where the writes are now: in the image, or in the live overlay's upper."""
    kept = set(host.image_data.get(IMG, set()))
    for rec in mgr.list():
        assert rec.state is OverlayState.ACTIVE, f"{rec.name} is {rec.state} after recovery"
        upper = [m for m in host.mount_table if m.target == f"{RUN}/{rec.name}/rw"]
        overlay = [m for m in host.mount_table if m.target == rec.mountpoint]
        assert upper and overlay, "a listed overlay is mounted"
        kept |= host.upper_data[upper[-1].mount_id]
        for layer in rec.layers:  # a stacked layer is mounted, and holds its writes
            assert [m for m in host.mount_table if m.source == layer.loop_device
                    and host.loops.get(m.source) == layer.path], f"{layer.path} unmounted"
            kept |= host.image_data[layer.path]
    return kept


@pytest.mark.parametrize(("proc", "step"), CASES, ids=[f"{p}-{k}" for p, k in CASES])
def test_kill_after_every_step(proc: str, step: int) -> None:
    setup, act = PROCEDURES[proc]
    host = new_host()
    mgr = setup(host)
    host.calls.clear()
    host.crash_at = step
    with pytest.raises(Crashed):
        run(act(mgr))
    after = daemon(host.restarted())
    check_nothing_leaked(host, after)
    if proc.startswith("commit"):
        assert writes_kept(host, after) >= WRITES, "a write was lost"
    if proc.startswith("squash"):
        assert writes_kept(host, after) >= WRITES | MORE | MORE2, "a write was lost"
        assert len(after.get("demo").layers) in ((0, 2) if proc.endswith("image") else (1, 2))
    if proc == "revert":
        kept = writes_kept(host, after)
        assert kept >= WRITES and (kept >= MORE) == (len(after.get("demo").layers) == 2)
    if proc == "commit-layer-second":
        assert writes_kept(host, after) >= WRITES | MORE, "a write was lost"
        assert len(after.get("demo").layers) in (1, 2)
    elif proc.startswith("discard") and "demo" in {r.name for r in after.list()}:
        assert writes_kept(host, after) >= WRITES, "a kept overlay lost its writes"
    if "other" in {r.name for r in after.list()}:  # the sharer lost nothing to the kill
        assert after.get("other").state is OverlayState.ACTIVE
        assert [m for m in host.mount_table if m.target == after.get("other").mountpoint]
    # No name is wedged: it can be discarded (if it came back) and created again.
    for rec in after.list():
        run(after.discard(rec.name, force=True))
    check_nothing_leaked(host, after)
    assert host.mount_table == [] and not host.loops and not host.locked
    run(after.create(parse_spec({"name": "demo", "image": IMG})))
    run(after.discard("demo"))
    check_nothing_leaked(host, after)
    assert host.mount_table == [] and not host.loops


def test_a_commit_killed_while_writing_the_image_is_half_committed() -> None:
    host = new_host()
    mgr = with_writes(host)
    host.calls.clear()
    host.crash_at = 1 + next(i for i, c in enumerate(
        _calls_of_commit()) if c == "apply_entry") + 1  # after the first entry reached it
    with pytest.raises(Crashed):
        run(mgr.commit("demo"))
    assert 0 < len(host.image_data[IMG]) < len(WRITES), "the image holds part of the writes"
    after = daemon(host.restarted())
    rec = after.get("demo")
    assert rec.half_committed and rec.state is OverlayState.ACTIVE
    with pytest.raises(Exception, match="half-committed"):
        run(after.discard("demo"))
    run(after.commit("demo"))
    assert host.image_data[IMG] >= WRITES and not after.get("demo").half_committed
    run(after.discard("demo"))


def _calls_of_commit() -> list[str]:
    host = new_host()
    mgr = with_writes(host)
    host.calls.clear()
    run(mgr.commit("demo"))
    return list(host.calls)


def _interrupted_host() -> FakeHost:
    """A live overlay (of another image) and one whose commit died while writing."""
    host = new_host()
    mgr = with_writes(host)
    run(mgr.create(parse_spec({"name": "other", "image": IMG2})))
    host.calls.clear()
    host.crash_at = 1 + _calls_of_commit().index("apply_entry") + 1
    with pytest.raises(Crashed):
        run(mgr.commit("demo"))
    return host.restarted()


def _recovery_calls() -> list[tuple[str, int]]:
    host = _interrupted_host()
    daemon(host)
    seen: dict[str, int] = {}
    out = []
    for name in host.calls:
        seen[name] = seen.get(name, 0) + 1
        out.append((name, seen[name]))
    return out


# Without its runtime directory or the mount table a daemon cannot know what it owns: a
# failure to read either fails the start (and systemd starts it again), nothing else may.
FATAL = {("list_dir", 1), ("table", 1)}


@pytest.mark.parametrize("call", [c for c in _recovery_calls() if c[0] != "path_kind"],
                         ids=lambda c: f"{c[0]}#{c[1]}")
def test_recovery_survives_any_failing_call(call: tuple[str, int]) -> None:
    from overlayd.errors import OverlaydError

    host = _interrupted_host()
    host.fail_nth = {call: OverlaydError(f"injected at {call}")}
    if call in FATAL:
        with pytest.raises(OverlaydError, match="injected"):
            daemon(host)
    else:
        first = daemon(host)  # never raises: a failure costs at most the overlay it hit
        assert first.list(), "the overlay the failure did not hit is recovered"
    host.fail_nth = {}
    second = daemon(host)  # the next start finishes the job
    assert {r.name for r in second.list()} == {"demo", "other"}
    assert writes_kept(host, second) >= WRITES
    for rec in second.list():
        run(second.discard(rec.name, force=True))
    check_nothing_leaked(host, second)
    assert host.mount_table == [] and not host.loops


# --- upper = "zram" (issue 16): a kill at every step leaks no device ----------------------

FOREIGN_ZRAM = "/dev/zram0"  # the host's own (swap, say): never touched


def zram_host() -> FakeHost:
    host = new_host()
    host.zram[FOREIGN_ZRAM] = "not-ours"
    return host


def zram_spec(name: str = "demo") -> Any:
    return parse_spec({"name": name, "image": IMG, "upper": "zram", "size": "16M"})


def zram_with_writes(host: FakeHost) -> OverlayManager:
    mgr = daemon(host)
    run(mgr.create(zram_spec()))
    host.write_upper(f"{RUN}/demo/rw", *WRITES)
    return mgr


ZRAM_PROCEDURES: dict[str, tuple[Setup, Act]] = {
    "create": (daemon, lambda m: m.create(zram_spec())),
    "commit": (zram_with_writes, lambda m: m.commit("demo")),
    "discard": (zram_with_writes, lambda m: m.discard("demo")),
    "discard-force": (zram_with_writes, lambda m: m.discard("demo", force=True)),
}


def zram_steps_of(proc: str) -> int:
    setup, act = ZRAM_PROCEDURES[proc]
    host = zram_host()
    mgr = setup(host)
    host.calls.clear()
    run(act(mgr))
    return len(host.calls)


ZRAM_CASES = [(p, k) for p in ZRAM_PROCEDURES for k in range(1, zram_steps_of(p) + 1)]


def check_no_zram_leaked(host: FakeHost, mgr: OverlayManager) -> None:
    recorded = {r.upper.device for r in mgr.list()}
    assert host.zram.get(FOREIGN_ZRAM) == "not-ours", "the host's own device was touched"
    assert set(host.zram) - {FOREIGN_ZRAM} == recorded - {""}, \
        f"zram devices {sorted(host.zram)}, recorded {sorted(recorded)}"


@pytest.mark.parametrize(("proc", "step"), ZRAM_CASES, ids=[f"{p}-{k}" for p, k in ZRAM_CASES])
def test_zram_kill_after_every_step(proc: str, step: int) -> None:
    setup, act = ZRAM_PROCEDURES[proc]
    host = zram_host()
    mgr = setup(host)
    host.calls.clear()
    host.crash_at = step
    with pytest.raises(Crashed):
        run(act(mgr))
    killed_at = host.calls[-1]
    after = daemon(host.restarted())
    check_nothing_leaked(host, after)
    if killed_at == "zram_note":
        # The one window left: between reading hot_add (the device exists) and writing
        # its note, two syscalls apart. The device left is blank and has no size, so it
        # holds no RAM; nothing can tell it from another's, so it is not touched.
        (blank,) = set(host.zram) - {FOREIGN_ZRAM}
        assert host.zram.pop(blank) == ""
    check_no_zram_leaked(host, after)
    if proc == "commit":
        assert writes_kept(host, after) >= WRITES, "a write was lost"
    elif proc.startswith("discard") and "demo" in {r.name for r in after.list()}:
        assert writes_kept(host, after) >= WRITES, "a kept overlay lost its writes"
    for rec in after.list():
        run(after.discard(rec.name, force=True))
    check_nothing_leaked(host, after)
    check_no_zram_leaked(host, after)
    assert host.mount_table == [] and set(host.zram) == {FOREIGN_ZRAM}
    run(after.create(zram_spec()))
    run(after.discard("demo"))
    assert set(host.zram) == {FOREIGN_ZRAM} and host.mount_table == []


def test_a_zram_device_held_elsewhere_is_left_and_collected() -> None:
    """Discard goes through while another namespace holds the device; it is removed once
    let go, at the next zram create or discard, or at the next start."""
    host = zram_host()
    mgr = zram_with_writes(host)
    dev = mgr.get("demo").upper.device
    host.zram_held.add(dev)
    run(mgr.discard("demo"))
    assert mgr.list() == [] and dev in host.zram and host.zram_leftovers == {dev: "uuid-1"}
    run(mgr.create(zram_spec()))  # held still: it stays
    run(mgr.discard("demo"))
    assert dev in host.zram
    host.zram_held.clear()
    after = daemon(host)  # a start collects it
    assert set(host.zram) == {FOREIGN_ZRAM} and not host.zram_leftovers
    check_nothing_leaked(host, after)
