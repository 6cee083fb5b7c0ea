"""The partition setting (issue 15) through the pure layers and the fake host: the spec
key's rules, the record (old records read as they were), .overlay files, the bus spec's
variant types, which overlays share a lower or block a commit, and a Create/Commit/Discard
of one partition beside another on the FakeHost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Variant

from overlayd.bus.errors import InvalidArgs
from overlayd.bus.spec import decode_spec
from overlayd.config import DaemonConfig
from overlayd.errors import ImageInUse, InvalidSpec
from overlayd.host.fake import FakeHost
from overlayd.layout import Layout
from overlayd.manager import OverlayManager
from overlayd.model import Lower, LowerKind, Merged, Overlay, OverlayState, Upper, parse_spec
from overlayd.overlayfile import OverlayFile
from overlayd.partitions import overlaps
from overlayd.sharing import SharedLowers
from overlayd.state import dump_record, load_record

IMG = "/srv/pi.img"
MiB = 1 << 20


@pytest.mark.parametrize("value", [1, 2, 5, 128, "rootfs", "EFI system partition", "2"])
def test_partition_values_taken_as_given(value: int | str) -> None:
    assert parse_spec({"name": "a", "image": "/x", "partition": value}).partition == value


@pytest.mark.parametrize("value, words", [
    (0, "partition numbers start at 1"), (-1, "partition numbers start at 1"),
    (70000, "partition numbers go up to 65535"),
    (4294967295, "partition numbers go up to 65535"),
    (True, "a number .* or a GPT partition label"),
    ("", "1 to 36 characters"), ("x" * 37, "1 to 36 characters"), ("a\0b", "1 to 36"),
    (1.5, "a number"), ([1], "a number"),
])
def test_bad_partition_values(value: Any, words: str) -> None:
    with pytest.raises(InvalidSpec, match=words) as e:
        parse_spec({"name": "a", "image": "/x", "partition": value})
    assert e.value.field == "partition"


def test_bus_spec_types() -> None:
    assert decode_spec("a", {"image": Variant("s", "/x"),
                             "partition": Variant("u", 2)}).partition == 2
    assert decode_spec("a", {"image": Variant("s", "/x"),
                             "partition": Variant("s", "rootfs")}).partition == "rootfs"
    with pytest.raises(InvalidArgs, match="must be of type 'u'"):
        decode_spec("a", {"image": Variant("s", "/x"), "partition": Variant("b", True)})


def test_overlay_file_takes_partition_but_not_at_boot() -> None:
    assert OverlayFile.model_validate({"image": "/x", "partition": 2}).spec("a").partition == 2
    with pytest.raises(ValueError, match=r"boot overlay .* uses the whole image"):
        OverlayFile.model_validate({"image": "/x", "partition": 2, "boot": True})


def _rec(lower: Lower) -> Overlay:
    return Overlay(name="p", state=OverlayState.ACTIVE, lowers=(lower,),
                   upper=Upper(size=MiB), merged=Merged(mountpoint="/m"))


def test_record_keeps_the_partition_and_old_records_read_as_they_were() -> None:
    whole = _rec(Lower(kind=LowerKind.FILE, image="/i", fstype="ext4"))
    assert set(json.loads(dump_record(whole))["lowers"][0]) == {
        "kind", "image", "dev", "ino", "fstype", "loop_device", "shared"}
    for asked in (2, "rootfs"):
        part = _rec(Lower(kind=LowerKind.FILE, image="/i", fstype="ext4", partition=asked,
                          offset=4 * MiB, sizelimit=8 * MiB))
        loaded = load_record(dump_record(part))
        assert isinstance(loaded, Overlay)
        assert loaded.lowers[0] == part.lowers[0]
        assert loaded.partition == str(asked)
    adopted = _rec(Lower(kind=LowerKind.FILE, image="/i", offset=4 * MiB, sizelimit=MiB))
    assert adopted.partition == "@4194304" and adopted.lowers[0].partitioned


def test_each_partition_has_its_shared_mount() -> None:
    layout = Layout.for_overlay(Path("/run/overlayd"), "p")
    whole = Lower(kind=LowerKind.FILE, image="/i", dev=1, ino=2, shared=True)
    part = whole.model_copy(update={"partition": 2, "offset": 4 * MiB, "sizelimit": MiB})
    assert str(layout.lower_of(whole)) == "/run/overlayd/.lowers/1-2"
    assert str(layout.lower_of(part)) == f"/run/overlayd/.lowers/1-2-p{4 * MiB}"


def test_overlaps() -> None:
    assert overlaps((0, 0), (4, 4))  # the whole image reads every partition
    assert not overlaps((0, 4), (4, 4)) and overlaps((0, 5), (4, 4))
    assert overlaps((8, 0), (4, 5)) and not overlaps((8, 0), (4, 4))


def test_shared_lowers_by_partition() -> None:
    shared = SharedLowers()

    def rec(name: str, offset: int, size: int) -> Overlay:
        return _rec(Lower(kind=LowerKind.FILE, image="/i", dev=1, ino=2, shared=True,
                          partition=1 if offset else None, offset=offset,
                          sizelimit=size)).evolve(name=name)
    one, two, two_b = rec("one", MiB, MiB), rec("two", 2 * MiB, MiB), rec("two-b", 2 * MiB, MiB)
    for r in (one, two, two_b):
        shared.add(r)
    w2 = two.lowers[0].window
    assert shared.users((1, 2), but="two", window=w2) == ["two-b"]
    assert shared.in_use((1, 2), but="two", window=w2)
    assert not shared.in_use((1, 2), but="one", window=one.lowers[0].window)
    assert shared.in_use((1, 2), but="one")  # the file (its lock) is still used
    shared.add(rec("whole", 0, 0))
    assert shared.users((1, 2), but="one", window=one.lowers[0].window) == ["whole"]


# -- on the fake host -----------------------------------------------------------------------

def _host() -> FakeHost:
    host = FakeHost(image_fstypes={IMG: "partition-table"})
    host.dirs.add("/run/overlayd")
    host.image_partitions[IMG] = {1: (MiB, 8 * MiB, "ext4"), 2: (9 * MiB, 16 * MiB, "ext4"),
                                  "rootfs": (9 * MiB, 16 * MiB, "ext4")}
    return host


def _run(coro: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_partitions_on_the_fake_host() -> None:
    host = _host()

    async def go() -> None:
        mgr = OverlayManager(DaemonConfig(runtime_dir=Path("/run/overlayd")), host)
        await mgr.start()
        with pytest.raises(InvalidSpec, match="partition table"):
            await mgr.create(parse_spec({"name": "whole", "image": IMG}))
        one = await mgr.create(parse_spec({"name": "one", "image": IMG, "partition": 1}))
        two = await mgr.create(parse_spec({"name": "two", "image": IMG, "partition": 2}))
        again = await mgr.create(parse_spec({"name": "again", "image": IMG,
                                             "partition": "rootfs"}))
        assert host.loop_windows[one.loop_device] == (MiB, 8 * MiB)
        assert host.loop_windows[two.loop_device] == (9 * MiB, 16 * MiB)
        assert again.loop_device == two.loop_device  # the same partition: shared
        assert one.loop_device != two.loop_device
        with pytest.raises(ImageInUse, match="'again'"):
            await mgr.commit("two")
        await mgr.discard("again")
        await mgr.commit("two")  # partition 1 is read by 'one': not in the way
        committed = mgr.get("two")
        assert host.loop_windows[committed.loop_device] == (9 * MiB, 16 * MiB)
        assert [s for s in host.detached_fds] == []
        await mgr.discard("two")
        assert (1, one.lowers[0].ino) in host.locked  # 'one' still reads the file
        await mgr.discard("one")
        assert not host.locked
        await mgr.aclose()
    _run(go())
    assert not host.loops


def test_render_refuses_a_partition(tmp_path: Path) -> None:
    """Mount units would mount the whole image: a partition needs the daemon."""
    from overlayd import render

    with pytest.raises(InvalidSpec, match="uses a partition of its image"):
        render.render("x", OverlayFile(image="/srv/pi.img", partition=2),
                      tmp_path / "x.overlay", DaemonConfig(), 8 << 30)


@pytest.mark.parametrize("key,value,words", [
    ("engine", "fuse", "uses engine 'fuse'; mount units mount the kernel's overlayfs"),
    ("upper", "zram", "keeps its writes in zram; mount units mount a tmpfs")])
def test_render_refuses_what_mount_units_cannot_mount(tmp_path: Path, key: str, value: str,
                                                      words: str) -> None:
    """Like a partition: the units would mount a kernel overlay on a tmpfs, ignoring it."""
    from overlayd import render

    with pytest.raises(InvalidSpec, match=words) as e:
        render.render("x", OverlayFile.model_validate({"image": "/srv/disk.img", key: value}),
                      tmp_path / "x.overlay", DaemonConfig(), 8 << 30)
    assert e.value.field == key
