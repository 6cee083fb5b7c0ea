"""Reconfigure and reload, the pure parts: which keys of a new spec differ from a live
overlay and which can change live (reconfig.py); what a configuration reload keeps
(config.reloaded); the manager's bookkeeping on FakeHost (the record, the journal). The
real remount is tests/kernel/test_reconfigure.py, the bus method tests/bus/test_reconfigure.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from overlayd import reconfig
from overlayd.config import DaemonConfig, differences, reloaded
from overlayd.errors import LimitExceeded
from overlayd.events import NOTICE, Event
from overlayd.host.fake import FakeHost
from overlayd.manager import OverlayManager
from overlayd.model import (
    Layer,
    Lower,
    LowerKind,
    Merged,
    Overlay,
    OverlayState,
    Upper,
    UpperKind,
    parse_spec,
)
from overlayd.sdnotify import Notifier

IMG = "/srv/disk.img"


def record(**kw: Any) -> Overlay:
    base: dict[str, Any] = dict(
        name="demo", state=OverlayState.ACTIVE,
        lowers=(Lower(kind=LowerKind.FILE, image=IMG, fstype="ext4"),),
        upper=Upper(size=64 << 20), merged=Merged(mountpoint="/mnt/demo", options=("ro",)))
    return Overlay(**{**base, **kw})


def test_the_same_settings_change_nothing() -> None:
    p = reconfig.plan(record(), {"image": IMG, "mountpoint": "/mnt/demo/", "size": 64 << 20,
                                 "mount_options": ("ro",), "layers": (), "upper": "tmpfs",
                                 "fstype": "ext4"})
    assert p.changes_nothing


def test_a_new_size_of_a_tmpfs_changes_live() -> None:
    p = reconfig.plan(record(), {"size": 128 << 20, "image": IMG})
    assert p.live == {"size": 128 << 20} and p.fixed == {}


def test_a_zram_size_is_fixed_and_says_why() -> None:
    rec = record(upper=Upper(kind=UpperKind.ZRAM, size=64 << 20, device="/dev/zram3"))
    p = reconfig.plan(rec, {"size": 128 << 20})
    assert p.live == {} and "zram" in p.fixed["size"]
    assert "'size' differs but cannot change live" in reconfig.explain(p)


@pytest.mark.parametrize("key,value", [
    ("image", "/srv/other.img"), ("mountpoint", "/mnt/elsewhere"), ("fstype", "xfs"),
    ("mount_options", ("ro", "noexec")), ("layers", ("/l/1.erofs",)), ("upper", "zram"),
    ("compressor", "lz4")])
def test_every_other_key_that_differs_is_named_not_applied(key: str, value: Any) -> None:
    p = reconfig.plan(record(), {key: value, "size": 64 << 20})
    assert p.live == {} and list(p.fixed) == [key] and p.fixed[key] == reconfig.FIXED_WHY[key]


def test_options_the_daemon_forces_are_no_difference() -> None:
    rec = record(merged=Merged(mountpoint="/mnt/demo", options=("noexec", "nosuid", "nodev")))
    assert reconfig.plan(rec, {"mount_options": ("noexec",)},
                         forced_options=("nosuid", "nodev")).changes_nothing
    assert "mount_options" in reconfig.plan(rec, {"mount_options": ("noexec",)}).fixed


def test_layers_compare_in_order_and_fstype_unset_means_detected() -> None:
    rec = record(layers=(Layer(path="/l/1.erofs"), Layer(path="/l/2.erofs")))
    assert reconfig.plan(rec, {"layers": ("/l/1.erofs", "/l/2.erofs"), "fstype": None}) \
        .changes_nothing
    assert "layers" in reconfig.plan(rec, {"layers": ("/l/2.erofs", "/l/1.erofs")}).fixed


def test_a_key_left_out_stays() -> None:
    assert reconfig.plan(record(), {}).changes_nothing


# -- the configuration's reload ----------------------------------------------------------

def test_reload_takes_new_defaults_and_keeps_the_places() -> None:
    old = DaemonConfig(runtime_dir=Path("/run/a"), default_size=1 << 20)
    new = DaemonConfig(runtime_dir=Path("/run/b"), default_size=2 << 20, usage_high=70,
                       layer_dir=Path("/var/x"))
    kept_cfg, kept = reloaded(old, new)
    assert kept == ["runtime_dir", "layer_dir"]
    assert kept_cfg.runtime_dir == Path("/run/a") and kept_cfg.layer_dir == old.layer_dir
    assert kept_cfg.default_size == 2 << 20 and kept_cfg.usage_high == 70
    assert differences(old, kept_cfg) == ["default_size", "usage_high"]


def test_reloading_notifies_with_monotonic_usec(tmp_path: Path) -> None:
    import socket

    addr = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(addr)
        n = Notifier({"NOTIFY_SOCKET": addr})
        n.reloading("Reloading")
        lines = s.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=")[1]) > 0 and lines[2] == "STATUS=Reloading"


# -- the manager on FakeHost --------------------------------------------------------------

def run(coro: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def new_manager(**cfg: Any) -> tuple[FakeHost, OverlayManager]:
    host = FakeHost(image_fstypes={IMG: "ext4"})
    host.dirs.add("/run/overlayd")
    return host, OverlayManager(DaemonConfig(runtime_dir=Path("/run/overlayd"), **cfg), host)


def test_the_manager_resizes_saves_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    host, mgr = new_manager()
    changes: list[Any] = []

    async def go() -> reconfig.Plan:
        await mgr.start()
        await mgr.create(parse_spec({"name": "demo", "image": IMG, "size": "32M"}))
        mgr.subscribe(lambda n, r: changes.append(r))
        return await mgr.reconfigure("demo", {"size": 48 << 20, "mountpoint": "/elsewhere"},
                                     caller_uid=0)

    with caplog.at_level(logging.INFO, logger="overlayd"):
        p = run(go())
    assert p.live == {"size": 48 << 20} and list(p.fixed) == ["mountpoint"]
    assert mgr.get("demo").size == 48 << 20 and changes[-1].size == 48 << 20
    stored = mgr.store.load("demo")
    assert isinstance(stored, Overlay) and stored.size == 48 << 20
    tmpfs = [m for m in host.mount_table if m.fstype == "tmpfs"]
    assert tmpfs[0].super_option("size") == f"{48 << 10}k"
    (entry,) = [r for r in caplog.records if getattr(r, "OVERLAYD_EVENT", None)
                == Event.RECONFIGURED]
    assert entry.levelno == NOTICE and "'mountpoint' differs" in entry.getMessage()
    assert entry.__dict__["OVERLAYD_CHANGED"] == "size"
    assert entry.__dict__["OVERLAYD_NOT_CHANGED"] == "mountpoint"


def test_the_manager_refuses_a_size_above_the_limit_and_keeps_the_record() -> None:
    host, mgr = new_manager(max_size=40 << 20)

    async def go() -> None:
        await mgr.start()
        await mgr.create(parse_spec({"name": "demo", "image": IMG, "size": "32M"}))
        with pytest.raises(LimitExceeded, match="max_size"):
            await mgr.reconfigure("demo", {"size": 64 << 20})

    run(go())
    assert mgr.get("demo").size == 32 << 20
    assert "resize_upper" not in host.calls


def test_the_manager_holds_a_resize_to_max_total_size() -> None:
    """A resize counts as a Create would (issue 15): the others' sizes plus the new one."""
    _host, mgr = new_manager(max_total_size="80M")

    async def go() -> None:
        await mgr.start()
        await mgr.create(parse_spec({"name": "a", "image": IMG, "size": "32M"}))
        await mgr.create(parse_spec({"name": "b", "image": IMG, "size": "32M"}))
        with pytest.raises(LimitExceeded, match="max_total_size"):
            await mgr.reconfigure("b", {"size": 64 << 20})
        await mgr.reconfigure("b", {"size": 48 << 20})  # 32M + 48M: exactly the limit

    run(go())
    assert mgr.get("b").size == 48 << 20 and mgr.reserved_total() == 80 << 20


def test_a_discard_that_throws_writes_away_says_what(caplog: pytest.LogCaptureFixture) -> None:
    host, mgr = new_manager()

    async def go() -> None:
        await mgr.start()
        await mgr.create(parse_spec({"name": "demo", "image": IMG}))
        host.write_upper(str(mgr.store.layout("demo").upper_mount), "a", "b")
        await mgr.discard("demo")
        await mgr.create(parse_spec({"name": "clean", "image": IMG}))
        await mgr.discard("clean")

    with caplog.at_level(logging.INFO, logger="overlayd"):
        run(go())
    events = {r.__dict__["OVERLAYD_NAME"]: r for r in caplog.records
              if getattr(r, "OVERLAYD_EVENT", None) == Event.DISCARDED}
    lost = events["demo"]
    assert lost.levelno == NOTICE and "2 entries (2 added" in lost.getMessage()
    assert lost.__dict__["OVERLAYD_ENTRIES"] == 2 and lost.__dict__["OVERLAYD_ADDED"] == 2
    assert events["clean"].levelno == logging.INFO  # nothing thrown away: no notice


def test_the_bus_spec_takes_the_image_by_path_only() -> None:
    from dbus_next import Variant

    from overlayd.bus.errors import InvalidArgs
    from overlayd.bus.spec import decode_settings
    from overlayd.errors import InvalidSpec

    assert decode_settings({"size": Variant("s", "1G"), "mount_options": Variant("as", [])}) \
        == {"size": 1 << 30, "mount_options": ()}
    with pytest.raises(InvalidArgs, match="Unknown Reconfigure spec key 'image_fd'"):
        decode_settings({"image_fd": Variant("h", 0)})
    with pytest.raises(InvalidSpec, match="size"):
        decode_settings({"size": Variant("t", 0)})


def test_a_compressor_alone_is_compared_not_refused() -> None:
    """A caller may give 'compressor' without 'upper' (a key left out stays): checked as
    for a zram upper, then compared with the live overlay's (fixed, with the reason)."""
    from dbus_next import Variant

    from overlayd.bus.spec import decode_settings
    from overlayd.errors import InvalidSpec

    assert decode_settings({"compressor": Variant("s", "zstd")}) == {"compressor": "zstd"}
    with pytest.raises(InvalidSpec, match="compressor"):
        decode_settings({"compressor": Variant("s", "zstd"), "upper": Variant("s", "tmpfs")})
    zram = record(upper=Upper(kind=UpperKind.ZRAM, size=64 << 20, compressor="lzo-rle"))
    p = reconfig.plan(zram, {"compressor": "zstd"})
    assert not p.live and set(p.fixed) == {"compressor"}
    assert reconfig.plan(zram, {"compressor": "lzo-rle"}).changes_nothing


def test_reconfigure_asks_with_its_own_sentence() -> None:
    from overlayd.bus.auth import polkit_details

    own = polkit_details("org.overlayd.overlayd1.create",
                         {"overlay": "demo", "image": "/i", "polkit.message": "resize demo"})
    assert own["polkit.message"] == "resize demo"
    plain = polkit_details("org.overlayd.overlayd1.create", {"overlay": "demo", "image": "/i"})
    assert plain["polkit.message"].startswith("Authentication is required to mount /i")


def test_every_spec_key_is_compared() -> None:
    """A spec key added later must be compared too (an unknown key would be an internal
    error): every setting of SpecSettings is in ``current``, live or fixed with a reason."""
    from overlayd.model import SpecSettings
    rec = record()
    assert set(SpecSettings.model_fields) == set(reconfig.current(rec))
    assert set(reconfig.current(rec)) == set(reconfig.LIVE_KEYS) | set(reconfig.FIXED_WHY)


def test_a_new_engine_or_partition_is_named_not_applied() -> None:
    p = reconfig.plan(record(), {"engine": "fuse", "partition": 2})
    assert not p.live and set(p.fixed) == {"engine", "partition"}
    assert reconfig.plan(record(), {"engine": "kernel", "partition": None}).changes_nothing


def test_a_reload_applies_a_new_usage_interval_to_the_image_space() -> None:
    """ImageFree is read at most once per usage_interval: a reload that shortens it from an
    hour to 0.1 s is followed (the cache used to keep the interval it was made with)."""
    import time

    host = FakeHost(image_fstypes={IMG: "ext4"})
    host.dirs.add("/run/overlayd")
    reads: list[str] = []
    fs_space = host.fs_space
    host.fs_space = lambda path: (reads.append(path), fs_space(path))[1]  # type: ignore
    cfg = DaemonConfig(runtime_dir=Path("/run/overlayd"), usage_interval=3600)
    mgr = OverlayManager(cfg, host)

    async def go() -> None:
        await mgr.start()
        await mgr.create(parse_spec({"name": "demo", "image": IMG}))
        mgr.image_space("demo")
        mgr.image_space("demo")
        assert len(reads) == 1
        mgr.set_config(cfg.model_copy(update={"usage_interval": 0.1}))
        mgr.image_space("demo")
        time.sleep(0.15)
        mgr.image_space("demo")
        assert len(reads) == 3
        await mgr.discard("demo")
    asyncio.run(go())
