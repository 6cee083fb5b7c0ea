"""The engine's logic on FakeHost: rollback at every step, locks, failure paths.

These tests show bookkeeping only; the real-kernel tests in tests/kernel show that the
features work.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import DaemonConfig
from overlayd.errors import (
    CommitFailed,
    InvalidSpec,
    LimitExceeded,
    MountFailed,
    NoSpace,
    OverlayBusy,
    OverlayExists,
)
from overlayd.host.fake import FakeHost
from overlayd.manager import OverlayManager
from overlayd.model import Overlay, OverlayState, parse_spec

CFG = DaemonConfig(runtime_dir=Path("/run/overlayd"))
IMG = "/srv/disk.img"


def new_host(**kw: Any) -> FakeHost:
    host = FakeHost(image_fstypes={IMG: "ext4"}, **kw)
    host.dirs.add("/run/overlayd")
    return host


def spec(name: str = "demo", **kw: Any) -> Any:
    return parse_spec({"name": name, "image": IMG, **kw})


def run(coro: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def manager(host: FakeHost, **cfg: Any) -> OverlayManager:
    return OverlayManager(DaemonConfig(runtime_dir=Path("/run/overlayd"), **cfg), host)


def create(host: FakeHost) -> Overlay:
    """Create as the daemon does it (a started manager), counting only Create's calls."""
    async def go() -> Overlay:
        mgr = manager(host)
        await mgr.start()
        host.calls.clear()
        return await mgr.create(spec())
    result: Overlay = run(go())
    return result


def create_calls() -> list[tuple[str, int]]:
    """Every host call a successful Create makes, as (method, nth call of that method)."""
    host = new_host()
    create(host)
    seen: dict[str, int] = {}
    out = []
    for name in host.calls:
        seen[name] = seen.get(name, 0) + 1
        if name != "path_kind":  # cannot fail on Linux, so the fake's never does either
            out.append((name, seen[name]))
    return out


def settled(host: FakeHost) -> dict[str, Any]:
    return {"mounts": host.mount_table, "loops": host.loops, "loop_fds": host.loop_fds,
            "files": host.file_data, "fds": host.open_fds,
            "dirs": host.dirs - {"/run/overlayd", "/run/overlayd/mnt", "/run/overlayd/.lowers"},
            "locks": host.locked}


def test_successful_create_makes_every_layer() -> None:
    host = new_host()
    rec = create(host)
    assert [m.fstype for m in host.mount_table] == ["ext4", "tmpfs", "overlay"]
    assert rec.state is OverlayState.ACTIVE and host.open_fds == 0
    assert rec.loop_device in host.loops and not host.loop_fds


@pytest.mark.parametrize("step", create_calls(), ids=lambda s: f"{s[0]}#{s[1]}")
def test_create_rolls_back_every_step(step: tuple[str, int]) -> None:
    host = new_host(fail_nth={step: MountFailed(f"injected at {step}")})
    empty = settled(new_host())
    with pytest.raises(MountFailed, match="injected"):
        create(host)
    assert settled(host) == empty


def test_rollback_goes_on_when_an_undo_fails(caplog: pytest.LogCaptureFixture) -> None:
    host = new_host(fail={"mount_overlay": MountFailed("overlay refused")},
                    busy={"/run/overlayd/demo/rw"})
    with pytest.raises(MountFailed, match="overlay refused"):
        create(host)
    assert [m.fstype for m in host.mount_table] == ["tmpfs"], "only the stuck step is left"
    assert "Failed to undo 'unmount the tmpfs'" in caplog.text


def test_two_creates_of_one_name_exactly_one_wins() -> None:
    mgr = manager(new_host())

    async def both() -> list[Any]:
        await mgr.start()
        return await asyncio.gather(mgr.create(spec()), mgr.create(spec()),
                                    return_exceptions=True)

    results = run(both())
    assert sum(isinstance(r, OverlayExists) for r in results) == 1
    assert [r.name for r in mgr.list()] == ["demo"]


def test_two_creates_on_one_mountpoint_exactly_one_wins() -> None:
    host = new_host()
    mgr = manager(host)

    async def both() -> list[Any]:
        await mgr.start()
        return await asyncio.gather(mgr.create(spec("a", mountpoint="/mnt")),
                                    mgr.create(spec("b", mountpoint="/mnt")),
                                    return_exceptions=True)

    results = run(both())
    assert sum(isinstance(r, InvalidSpec) for r in results) == 1
    assert len(mgr.list()) == 1


def test_limit_on_overlays() -> None:
    mgr = manager(new_host(), max_overlays=1)

    async def go() -> None:
        await mgr.start()
        await mgr.create(spec("one"))
        with pytest.raises(LimitExceeded, match="max_overlays"):
            await mgr.create(spec("two"))

    run(go())


def test_failed_commit_remounts_over_the_same_upper() -> None:
    host = new_host(fail={"apply_upper": NoSpace("The image is full.")})
    mgr = manager(host)
    events: list[tuple[str, str | None]] = []
    mgr.subscribe(lambda n, r: events.append((n, r.state.value if r else None)))

    async def go() -> None:
        await mgr.start()
        await mgr.create(spec())
        tmpfs_before = [m for m in host.mount_table if m.fstype == "tmpfs"]
        with pytest.raises(NoSpace, match="still in RAM"):
            await mgr.commit("demo")
        tmpfs_after = [m for m in host.mount_table if m.fstype == "tmpfs"]
        assert tmpfs_after == tmpfs_before, "the upper's tmpfs was never touched"

    run(go())
    assert sorted(m.fstype for m in host.mount_table) == ["ext4", "overlay", "tmpfs"]
    rec = mgr.get("demo")
    assert rec.state is OverlayState.ACTIVE and "image is full" in rec.error
    assert [s for _, s in events] == ["active", "committing", "active"]


def test_commit_that_cannot_remount_is_failed_and_says_so() -> None:
    host = new_host(fail_nth={("mount_overlay", 2): MountFailed("no overlay today")})
    mgr = manager(host)

    async def go() -> None:
        await mgr.start()
        await mgr.create(spec())
        with pytest.raises(CommitFailed, match="could not be mounted again"):
            await mgr.commit("demo")

    run(go())
    assert mgr.get("demo").state is OverlayState.FAILED


def test_busy_discard_keeps_the_overlay_until_forced() -> None:
    host = new_host(busy={"/run/overlayd/mnt/demo"})
    mgr = manager(host)

    async def go() -> None:
        await mgr.start()
        await mgr.create(spec())
        with pytest.raises(OverlayBusy, match=r"sleep \(pid 42\)"):
            await mgr.discard("demo")
        assert mgr.get("demo").state is OverlayState.ACTIVE
        await mgr.discard("demo", force=True)

    run(go())
    assert mgr.list() == [] and host.mount_table == [] and not host.loops


@pytest.mark.parametrize("layer", ["/run/overlayd/demo/rw", "/run/overlayd/.lowers/1-3"])
def test_discard_is_all_or_nothing(layer: str) -> None:
    """The overlay unmounts, a layer under it is busy: mounted back as it was, OverlayBusy
    with the holders, state active; only a remount that fails leaves it failed."""
    host = new_host(busy={layer})
    mgr = manager(host)

    async def go() -> None:
        await mgr.start()
        rec = await mgr.create(spec())
        host.write_upper("/run/overlayd/demo/rw", "kept.txt")
        with pytest.raises(OverlayBusy, match=r"sleep \(pid 42\).*mounted again"):
            await mgr.discard("demo")
        assert mgr.get("demo").state is OverlayState.ACTIVE
        assert [m for m in host.mount_table if m.target == rec.mountpoint]
        assert "kept.txt" in set().union(*host.upper_data.values())
        host.fail["mount_overlay"] = MountFailed("no remount")
        with pytest.raises(OverlayBusy, match="could not be mounted again"):
            await mgr.discard("demo")
        assert mgr.get("demo").state is OverlayState.FAILED
        host.fail.clear()
        await mgr.discard("demo", force=True)

    run(go())
    assert mgr.list() == [] and host.mount_table == [] and not host.loops


def test_recovery_on_fake_adopts_and_cleans() -> None:
    host = new_host()
    first = manager(host)
    run(first.start())
    run(first.create(spec("keep")))
    run(first.create(spec("half")))
    half = first.get("half").evolve(state=OverlayState.CREATING)
    from overlayd.state import dump_record

    host.file_data["/run/overlayd/half/overlay.json"] = dump_record(half)
    second = manager(host)
    result = run(second.start())
    assert [r.name for r in result.adopted] == ["keep"] and result.cleaned == ["half"]
    assert {m.source for m in host.mount_table if m.fstype != "ext4"} == {"overlayd-keep"}


def test_polkit_message_names_the_overlay_and_image() -> None:
    from overlayd.bus.auth import polkit_details

    d = polkit_details("org.overlayd.overlayd1.commit",
                       {"overlay": "demo", "image": "/srv/disk.img", "mountpoint": "/mnt"})
    assert d["polkit.message"] == ('Authentication is required to write the changes of overlay '
                                   '"demo" into /srv/disk.img')
    assert d["overlay"] == "demo" and d["image"] == "/srv/disk.img"


def test_calls_act_only_on_the_overlay_they_were_authorized_for() -> None:
    from overlayd.errors import NoSuchOverlay

    mgr = manager(new_host())

    async def go() -> None:
        await mgr.start()
        rec = await mgr.create(spec())
        with pytest.raises(NoSuchOverlay):
            await mgr.commit("demo", created_usec=rec.created_usec + 1)
        with pytest.raises(NoSuchOverlay):
            await mgr.discard("demo", created_usec=rec.created_usec + 1)
        await mgr.discard("demo", created_usec=rec.created_usec)

    run(go())


def test_create_commit_discard_never_read_the_whole_mount_table() -> None:
    """Their cost must not grow with the number of overlays (or of other mounts): they ask
    about their own mount points (statx/statmount), never for all of mountinfo."""
    host = new_host()
    mgr = manager(host)

    async def go() -> None:
        await mgr.start()
        host.calls.clear()
        await mgr.create(spec())
        await mgr.commit("demo")
        await mgr.discard("demo")

    run(go())
    assert "table" not in host.calls and "list_dir" not in host.calls


def test_a_mount_point_that_is_not_empty(caplog: pytest.LogCaptureFixture) -> None:
    """Root may mount over a directory that holds something (a warning says it is hidden, as
    systemd does); another caller may not. An empty one says nothing."""
    host = new_host()
    host.dirs |= {"/srv/full", "/srv/full/old", "/srv/empty", "/media/nobody",
                  "/media/nobody/full"}
    host.file_data["/media/nobody/full/f"] = b"x"
    mgr = manager(host)

    async def go() -> None:
        await mgr.start()
        with caplog.at_level("WARNING", logger="overlayd"):
            await mgr.create(spec("empty", mountpoint="/srv/empty"))
            assert not [r for r in caplog.records if "not empty" in r.getMessage()]
            rec = await mgr.create(spec("full", mountpoint="/srv/full"))
        assert rec.mountpoint == "/srv/full"
        warned = [r.getMessage() for r in caplog.records if "not empty" in r.getMessage()]
        assert warned == ["The mount point '/srv/full' is not empty; what it holds is hidden "
                          "while overlay 'full' is mounted."]
        with pytest.raises(InvalidSpec, match="is not empty; as uid 65534"):
            await mgr.create(spec("theirs", mountpoint="/media/nobody/full"), owner_uid=65534)
        assert "theirs" not in {r.name for r in mgr.list()}

    run(go())


def test_linux_files_has_entries(tmp_path: Path) -> None:
    from overlayd.host.files import LinuxFiles

    files = LinuxFiles()
    assert files.has_entries(str(tmp_path)) is False
    (tmp_path / ".hidden").write_text("")
    assert files.has_entries(str(tmp_path)) is True


def test_image_space_is_unknown_while_the_image_mount_is_down() -> None:
    """A commit (or a create, a discard) has the image mount down: statvfs of its empty
    directory would read the runtime directory's file system, and cache it. (0, 0) then,
    which overlayctl status shows as '-'; read again once the overlay is settled."""
    host = new_host()
    reads: list[str] = []
    fs_space = host.fs_space
    host.fs_space = lambda path: (reads.append(path), fs_space(path))[1]  # type: ignore

    async def go() -> None:
        mgr = manager(host)
        await mgr.start()
        rec = await mgr.create(spec())
        assert mgr.image_space("demo") == (1 << 30, 256 << 20)
        mgr._spaces.forget(mgr._image_mount(rec))
        reads.clear()
        committing = mgr._move(rec, OverlayState.COMMITTING)
        assert mgr.image_space("demo") == (0, 0)
        assert reads == [], "nothing read, nothing cached"
        mgr._move(committing, OverlayState.ACTIVE)
        assert mgr.image_space("demo") == (1 << 30, 256 << 20)
        await mgr.discard("demo")
    run(go())


def test_the_usage_of_an_upper_that_is_gone_is_zero_not_the_disk_below() -> None:
    """A failed overlay whose upper was unmounted (a discard stopped after it): statvfs of
    its empty directory read the file system below, shown as gigabytes of writes."""
    host = new_host()
    reads: list[str] = []
    usage = host.usage
    host.usage = lambda target, upper=None: (reads.append(target), usage(target, upper))[1]  # type: ignore

    async def go() -> None:
        mgr = manager(host)
        await mgr.start()
        rec = await mgr.create(spec())
        upper_mount = f"/run/overlayd/{rec.name}/rw"
        failed = mgr._move(rec, OverlayState.FAILED, error="injected")
        reads.clear()
        mgr.usage_now("demo")
        assert reads == [upper_mount], "its upper is still mounted: read"
        host.unmount(upper_mount, lambda m: True)
        reads.clear()
        assert mgr.usage_now("demo").used == 0 and reads == []
        await mgr.discard("demo", force=True)
        assert failed.name not in {r.name for r in mgr.list()}
    run(go())
