"""The state follows the mount table (issue 11): on FakeHost, an overlay unmounted from
outside becomes "unmounted" (and "active" when mounted back), a late boot overlay is
adopted, and the watcher never touches an overlay a call is working on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from overlayd.config import DaemonConfig
from overlayd.host.fake import FakeHost
from overlayd.manager import OverlayManager
from overlayd.model import Overlay, OverlayState, Upper, parse_spec
from overlayd.transitions import ALLOWED

RUN = "/run/overlayd"
IMG = "/srv/disk.img"


def new_host() -> FakeHost:
    host = FakeHost(image_fstypes={IMG: "ext4"})
    host.dirs.add(RUN)
    return host


def run(coro: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def unmount_from_outside(host: FakeHost, target: str) -> None:
    host.mount_table = [m for m in host.mount_table if m.target != target]
    assert host.watcher is not None
    host.watcher.changed()


def test_unmounted_from_outside_then_discarded() -> None:
    host = new_host()
    seen: list[tuple[str, str]] = []

    async def go() -> None:
        mgr = OverlayManager(DaemonConfig(runtime_dir=Path(RUN)), host)
        await mgr.start()
        mgr.subscribe(lambda n, r: seen.append((n, r.state.value if r else "gone")))
        mgr.watch_mounts(debounce=0.01, interval=0.01)
        rec = await mgr.create(parse_spec({"name": "demo", "image": IMG}))
        unmount_from_outside(host, rec.mountpoint)
        for _ in range(500):  # a generous bound: a hang fails, time is never asserted
            if mgr.get("demo").state is OverlayState.UNMOUNTED:
                break
            await asyncio.sleep(0.01)
        assert mgr.get("demo").state is OverlayState.UNMOUNTED
        assert "outside overlayd" in mgr.get("demo").error
        await mgr.discard("demo")
        await mgr.aclose()

    run(go())
    assert ("demo", "unmounted") in seen and seen[-1] == ("demo", "gone")
    assert host.mount_table == [] and not host.loops


def test_mounted_back_is_active_again_and_commit_remounts() -> None:
    host = new_host()

    async def go() -> None:
        mgr = OverlayManager(DaemonConfig(runtime_dir=Path(RUN)), host)
        await mgr.start()
        mgr.watch_mounts()
        rec = await mgr.create(parse_spec({"name": "demo", "image": IMG}))
        merged = [m for m in host.mount_table if m.target == rec.mountpoint][-1]
        host.mount_table.remove(merged)
        assert await mgr.check_mounts() == ["demo"]
        assert mgr.get("demo").state is OverlayState.UNMOUNTED
        host.mount_table.append(merged)  # systemctl start of its mount unit
        assert await mgr.check_mounts() == ["demo"]
        assert mgr.get("demo").state is OverlayState.ACTIVE
        host.mount_table.remove(merged)
        await mgr.check_mounts()
        await mgr.commit("demo")  # writes the image and mounts the overlay again
        assert mgr.get("demo").state is OverlayState.ACTIVE
        assert [m for m in host.mount_table if m.target == rec.mountpoint]
        assert await mgr.check_mounts() == []
        await mgr.discard("demo")
        await mgr.aclose()

    run(go())


def test_the_watcher_leaves_a_busy_overlay_to_its_call() -> None:
    host = new_host()

    async def go() -> None:
        mgr = OverlayManager(DaemonConfig(runtime_dir=Path(RUN)), host)
        await mgr.start()
        rec = await mgr.create(parse_spec({"name": "demo", "image": IMG}))
        async with mgr._lock("demo"):  # a Commit at work: its unmount is its own
            host.mount_table = [m for m in host.mount_table if m.target != rec.mountpoint]
            assert await mgr.check_mounts() == []
        assert mgr.get("demo").state is OverlayState.ACTIVE
        await mgr.discard("demo")

    run(go())


def test_a_late_boot_overlay_is_adopted() -> None:
    """Its mount units come up after the daemon started: adopted at the next check."""
    host = new_host()
    spec = parse_spec({"name": "early", "image": IMG})

    async def go() -> Overlay:
        mgr = OverlayManager(DaemonConfig(runtime_dir=Path(RUN)), host)
        await mgr.start({"early": spec})
        assert await mgr.check_mounts() == []
        # What the three mount units make (as in tests of adoption at start).
        base = f"{RUN}/early"
        host.dirs |= {base, f"{base}/lower", f"{base}/rw", f"{RUN}/mnt", f"{RUN}/mnt/early"}
        loop = host.attach_loop(host.open_image(IMG, None), read_only=True, name=IMG)
        host.mount_fs(loop.path, f"{base}/lower", "ext4", read_only=True)
        loop.release()
        host.make("early", f"{base}/rw", Upper(size=1 << 20))
        host.prepare_upper(f"{base}/lower", f"{base}/rw/upper", f"{base}/rw/work")
        host.mount("early", f"{RUN}/mnt/early", lowers=[f"{base}/lower"],
                   upper=f"{base}/rw/upper", work=f"{base}/rw/work", options=())
        host.open_fds = 0
        assert await mgr.check_mounts() == ["early"]
        rec = mgr.get("early")
        assert rec.state is OverlayState.ACTIVE and not rec.lowers[0].shared
        assert (rec.lowers[0].dev, rec.lowers[0].ino) in host.locked
        await mgr.discard("early")
        return rec

    run(go())
    assert host.mount_table == [] and not host.locked


def test_unmounted_is_a_state_of_the_table() -> None:
    assert OverlayState.UNMOUNTED in ALLOWED[OverlayState.ACTIVE]
    assert ALLOWED[OverlayState.UNMOUNTED] == {OverlayState.COMMITTING,
                                               OverlayState.DISCARDING, OverlayState.ACTIVE}


def test_shared_lowers_count_without_a_scan() -> None:
    from overlayd.model import Lower, LowerKind, Merged, Upper
    from overlayd.sharing import SharedLowers

    def rec(name: str, ino: int) -> Overlay:
        return Overlay(name=name, state=OverlayState.ACTIVE,
                       lowers=(Lower(kind=LowerKind.FILE, image="/i", dev=1, ino=ino,
                                     shared=True),),
                       upper=Upper(size=1), merged=Merged(mountpoint=f"/m/{name}"))

    s = SharedLowers()
    for n in ("a", "b"):
        s.add(rec(n, 5))
    s.add(rec("c", 6))
    assert s.in_use((1, 5), but="a") and not s.in_use((1, 6), but="c")
    assert s.users((1, 5), but="b") == ["a"] and s.counts() == {(1, 5): 2, (1, 6): 1}
    s.remove(rec("c", 6))
    assert not s.in_use((1, 6)) and s.counts() == {(1, 5): 2}
    with s.locked((1, 5)), s.locked(None):
        pass


def test_a_dead_fuse_server_fails_the_overlay_and_commit_brings_it_back() -> None:
    """engine = "fuse": a server found dead (FakeHost.dead_servers) moves the overlay from
    active to failed, its writes kept; Commit mounts it again; a kernel overlay is never
    asked."""
    host = new_host()

    async def go() -> None:
        mgr = OverlayManager(DaemonConfig(runtime_dir=Path(RUN)), host)
        await mgr.start()
        await mgr.create(parse_spec({"name": "f", "image": IMG, "engine": "fuse"}))
        await mgr.create(parse_spec({"name": "k", "image": IMG, "mountpoint": "/mnt"}))
        host.dead_servers |= {"f", "k"}
        assert await mgr.check_mounts() == ["f"]
        rec = mgr.get("f")
        assert rec.state is OverlayState.FAILED and "FUSE server" in rec.error
        assert mgr.get("k").state is OverlayState.ACTIVE
        assert OverlayState.FAILED in ALLOWED[OverlayState.ACTIVE]
        await mgr.discard("k")  # the image is shared: Commit waits for the others
        await mgr.commit("f")
        assert mgr.get("f").state is OverlayState.ACTIVE and mgr.get("f").error == ""
        await mgr.discard("f")
        await mgr.aclose()

    run(go())
