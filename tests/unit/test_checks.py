"""Pure checks of a Create request (overlayd.checks) and path arithmetic (overlayd.layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overlayd.checks import (
    check_mountpoint,
    check_overlay_options,
    check_total,
    choose_fstype,
    choose_size,
    reserved_total,
)
from overlayd.claims import MountpointClaims
from overlayd.config import DaemonConfig
from overlayd.errors import InvalidSpec, LimitExceeded, MountFailed
from overlayd.fstype import REFUSAL
from overlayd.layout import SOURCE_PREFIX, Layout, is_within, mount_source
from overlayd.model import (
    Lower,
    LowerKind,
    Merged,
    Overlay,
    OverlaySpec,
    OverlayState,
    Upper,
    UpperKind,
    parse_spec,
)
from overlayd.mountinfo import MountInfo
from overlayd.overlayfs import PINNED

GiB = 1 << 30
MiB = 1 << 20
CFG = DaemonConfig(runtime_dir=Path("/run/overlayd"))
ALL_FS = frozenset({"ext2", "ext3", "ext4", "squashfs", "erofs", "iso9660", "xfs", "btrfs",
                    "tmpfs", "overlay"})


def spec(**kw: Any) -> OverlaySpec:
    return parse_spec({"name": "demo", "image": "/srv/img.raw", **kw})


def record(name: str, mountpoint: str) -> Overlay:
    return Overlay(
        name=name, state=OverlayState.ACTIVE,
        lowers=(Lower(kind=LowerKind.FILE, image="/srv/img.raw", fstype="ext4"),),
        upper=Upper(size=GiB), merged=Merged(mountpoint=mountpoint),
    )


def mount(target: str, fstype: str = "ext4", source: str = "/dev/sda1",
          super_options: tuple[str, ...] = ("rw",)) -> MountInfo:
    return MountInfo(mount_id=100, parent_id=1, device="8:1", root="/", target=target,
                     options=("rw", "relatime"), fstype=fstype, source=source,
                     super_options=super_options)


# --- choose_size -------------------------------------------------------------------------------

def test_size_default() -> None:
    assert choose_size(spec(), CFG, memory=8 * GiB) == CFG.default_size == GiB


def test_size_default_capped_to_memory() -> None:
    assert choose_size(spec(), CFG, memory=512 * MiB) == 512 * MiB


def test_size_default_capped_to_max_size() -> None:
    cfg = DaemonConfig(runtime_dir=Path("/run/overlayd"), max_size=256 * MiB)
    assert choose_size(spec(), cfg, memory=8 * GiB) == 256 * MiB


def test_size_default_from_config() -> None:
    cfg = DaemonConfig(default_size="2G")
    assert choose_size(spec(), cfg, memory=8 * GiB) == 2 * GiB


@pytest.mark.parametrize("size", [MiB, MiB + 4096, 2 * GiB, 8 * GiB])
def test_size_requested(size: int) -> None:
    assert choose_size(spec(size=size), CFG, memory=8 * GiB) == size


def test_size_above_memory() -> None:
    with pytest.raises(LimitExceeded) as ei:
        choose_size(spec(size="16G"), CFG, memory=8 * GiB)
    text = str(ei.value)
    assert "memory" in text
    assert "16G" in text
    assert "8G" in text


def test_size_above_max_size() -> None:
    cfg = DaemonConfig(max_size="4G")
    with pytest.raises(LimitExceeded) as ei:
        choose_size(spec(size="6G"), cfg, memory=8 * GiB)
    text = str(ei.value)
    assert "max_size" in text
    assert "4G" in text
    assert "6G" in text


def test_size_at_max_size_is_fine() -> None:
    cfg = DaemonConfig(max_size="4G")
    assert choose_size(spec(size="4G"), cfg, memory=8 * GiB) == 4 * GiB


def test_size_max_size_above_memory_is_capped_to_memory() -> None:
    cfg = DaemonConfig(max_size="64G")
    with pytest.raises(LimitExceeded, match="memory"):
        choose_size(spec(size="16G"), cfg, memory=8 * GiB)


# --- the minimum size, max_total_size (issue 15) -------------------------------------------------

@pytest.mark.parametrize("size", [1, 4096, "1023K", MiB - 1])
def test_a_size_below_the_minimum_is_refused(size: int | str) -> None:
    with pytest.raises(InvalidSpec, match="at least 1M") as ei:
        spec(size=size)
    assert ei.value.field == "size"


def test_default_size_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="default_size must be at least 1M"):
        DaemonConfig(default_size="512K")


@pytest.mark.parametrize(("setting", "memory", "limit"), [
    ("50%", 8 * GiB, 4 * GiB), (" 150 %", 8 * GiB, 12 * GiB), ("12G", 8 * GiB, 12 * GiB),
    (3 * GiB, 8 * GiB, 3 * GiB), ("100%", 1000, 1000)])
def test_max_total_size_is_a_size_or_a_percent_of_memory(setting: str | int, memory: int,
                                                         limit: int) -> None:
    assert DaemonConfig(max_total_size=setting).total_limit(memory) == limit


def test_max_total_size_defaults_to_half_the_memory() -> None:
    assert DaemonConfig().max_total_size == "50%"
    assert DaemonConfig().total_limit(23 * GiB) == 23 * GiB // 2


@pytest.mark.parametrize("setting", ["0%", "1001%", "x%", "-5%", "0", "512K", "lots", 1.5])
def test_a_bad_max_total_size_is_refused(setting: object) -> None:
    with pytest.raises(ValueError, match=r"max_total_size|percent|size"):
        DaemonConfig(max_total_size=setting)


def test_the_sum_counts_every_upper_whatever_its_kind() -> None:
    zram = record("z", "/mnt/z").evolve(upper=Upper(kind=UpperKind.ZRAM, size=3 * GiB,
                                                    device="/dev/zram1", fs_uuid="u"))
    assert reserved_total([record("a", "/mnt/a"), zram]) == 4 * GiB


def test_within_the_total_is_fine() -> None:
    check_total(GiB, 3 * GiB, 4 * GiB, name="demo")  # exactly at the limit


def test_beyond_the_total_names_the_limit_the_sum_and_the_size() -> None:
    with pytest.raises(LimitExceeded) as ei:
        check_total(2 * GiB, 3 * GiB, 4 * GiB, name="demo")
    text = str(ei.value)
    assert "'demo'" in text and "max_total_size" in text
    assert "2G" in text and "3G" in text and "4G" in text and "1G is left" in text


def test_nothing_left_says_zero() -> None:
    with pytest.raises(LimitExceeded, match="0B is left"):
        check_total(MiB, 5 * GiB, 4 * GiB, name="demo")


# --- choose_fstype -----------------------------------------------------------------------------

@pytest.mark.parametrize("fs", ["ext2", "ext3", "ext4", "squashfs", "erofs", "iso9660", "xfs",
                                "btrfs"])
def test_fstype_detected(fs: str) -> None:
    assert choose_fstype("/srv/img", None, fs, ALL_FS) == (fs, fs)


def test_fstype_requested_matches() -> None:
    assert choose_fstype("/srv/img", "xfs", "xfs", ALL_FS) == ("xfs", "xfs")


def test_fstype_requested_only() -> None:
    assert choose_fstype("/srv/img", "btrfs", None, ALL_FS) == ("btrfs", "btrfs")


def test_fstype_requested_mismatch() -> None:
    with pytest.raises(InvalidSpec) as ei:
        choose_fstype("/srv/img", "xfs", "ext4", ALL_FS)
    assert ei.value.field == "fstype"
    assert "holds ext4, not xfs" in str(ei.value)
    assert "/srv/img" in str(ei.value)


@pytest.mark.parametrize(("requested", "detected"), [("ext3", "ext4"), ("ext2", "ext3"),
                                                     ("ext3", "ext2"), ("squashfs", "erofs")])
def test_fstype_other_mismatches(requested: str, detected: str) -> None:
    with pytest.raises(InvalidSpec) as ei:
        choose_fstype("/srv/img", requested, detected, ALL_FS)
    assert ei.value.field == "fstype"


@pytest.mark.parametrize("detected", ["ext2", "ext3"])
def test_fstype_ext4_requested_for_older_ext(detected: str) -> None:
    assert choose_fstype("/srv/img", "ext4", detected, ALL_FS) == (detected, detected)
    assert choose_fstype("/srv/img", "ext4", detected, frozenset({"ext4"})) == (detected, "ext4")


def test_fstype_nothing_detected_nothing_requested() -> None:
    with pytest.raises(InvalidSpec) as ei:
        choose_fstype("/srv/img", None, None, ALL_FS)
    assert ei.value.field == "image"
    assert "'fstype'" in str(ei.value)
    assert "/srv/img" in str(ei.value)


@pytest.mark.parametrize("tag", sorted(REFUSAL))
@pytest.mark.parametrize("requested", [None, "ext4"])
def test_fstype_refusals(tag: str, requested: str | None) -> None:
    with pytest.raises(InvalidSpec) as ei:
        choose_fstype("/srv/img", requested, tag, ALL_FS | {tag})
    assert ei.value.field == "image"
    assert str(ei.value) == f"The image '/srv/img' {REFUSAL[tag]}."


@pytest.mark.parametrize(("fs", "kernel"), [
    ("btrfs", ALL_FS - {"btrfs"}),
    ("squashfs", frozenset({"ext4"})),
    ("ext4", frozenset({"ext2", "ext3"})),
    ("ext2", frozenset({"ext3", "xfs"})),
])
def test_fstype_not_in_kernel(fs: str, kernel: frozenset[str]) -> None:
    with pytest.raises(InvalidSpec) as ei:
        choose_fstype("/srv/img", None, fs, kernel)
    assert ei.value.field == "image"
    assert "/proc/filesystems" in str(ei.value)
    assert fs in str(ei.value)


@pytest.mark.parametrize("fs", ["ext2", "ext3"])
def test_fstype_served_by_ext4_driver(fs: str) -> None:
    kernel = frozenset({"ext4", "squashfs"})
    assert choose_fstype("/srv/img", None, fs, kernel) == (fs, "ext4")
    assert choose_fstype("/srv/img", fs, None, kernel) == (fs, "ext4")


# --- check_mountpoint --------------------------------------------------------------------------

def check(path: str, kind: str = "directory", *, is_default: bool = False,
          mounts: list[MountInfo] | None = None, overlays: list[Overlay] | None = None) -> None:
    """The checks of a mount point: against the mount table (check_mountpoint), then
    against the mount points other overlays hold (MountpointClaims), as Create makes them."""
    check_mountpoint(path, kind, is_default=is_default, cfg=CFG, mounts=mounts or [])
    claims = MountpointClaims()
    for o in overlays or []:
        claims.claim(o.name, o.mountpoint)
    claims.claim("new", path)


def refused(path: str, kind: str = "directory", **kw: Any) -> str:
    with pytest.raises(InvalidSpec) as ei:
        check(path, kind, **kw)
    assert ei.value.field == "mountpoint"
    assert path in str(ei.value)
    return str(ei.value)


def test_mountpoint_ok() -> None:
    check("/srv/view", mounts=[mount("/"), mount("/srv")], overlays=[record("a", "/data/a")])


def test_mountpoint_missing() -> None:
    assert "does not exist" in refused("/srv/nowhere", "missing")


def test_mountpoint_not_a_directory() -> None:
    assert "not a directory" in refused("/srv/file", "other")


@pytest.mark.parametrize("path", ["/run/overlayd", "/run/overlayd/demo",
                                  "/run/overlayd/demo/rw/upper"])
def test_mountpoint_inside_runtime_dir(path: str) -> None:
    assert "runtime directory" in refused(path)


def test_mountpoint_under_mount_root_is_not_the_runtime_dir() -> None:
    check("/run/overlayd/mnt/custom")


def test_mountpoint_beside_runtime_dir() -> None:
    check("/run/overlayd2")


@pytest.mark.parametrize("path", ["/srv/a", "/srv/a/sub", "/srv/a/sub/deeper"])
def test_mountpoint_inside_another_overlay(path: str) -> None:
    text = refused(path, overlays=[record("other", "/data/x"), record("a", "/srv/a")])
    assert "inside overlay 'a'" in text
    assert "nested" in text


@pytest.mark.parametrize("path", ["/srv", "/"])
def test_mountpoint_ancestor_of_another_overlay(path: str) -> None:
    text = refused(path, overlays=[record("a", "/srv/a")])
    assert "would hide overlay 'a'" in text


def test_mountpoint_sibling_with_common_prefix() -> None:
    check("/srv/ab", overlays=[record("a", "/srv/a")])
    check("/srv/a-b", overlays=[record("a", "/srv/a")])


def test_mountpoint_already_mounted() -> None:
    text = refused("/mnt/usb", mounts=[mount("/"), mount("/mnt/usb", "vfat", "/dev/sdb1")])
    assert "already a mount point" in text
    assert "vfat from /dev/sdb1" in text


def test_mountpoint_inside_overlayd_overlay_from_mount_table() -> None:
    ours = mount("/data/ov", "overlay", mount_source("zz"))
    text = refused("/data/ov/sub", mounts=[mount("/"), ours])
    assert "inside the overlay mounted at '/data/ov'" in text


@pytest.mark.parametrize("m", [
    mount("/var/lib/docker/overlay2/x/merged", "overlay", "overlay"),  # not ours
    mount("/var/lib/docker/overlay2/x/merged", "tmpfs", "overlayd-x"),  # ours, but not an overlay
])
def test_mountpoint_inside_foreign_mount_is_fine(m: MountInfo) -> None:
    check("/var/lib/docker/overlay2/x/merged/sub", mounts=[m])


def test_default_mountpoint_skips_existence_checks() -> None:
    check("/run/overlayd/mnt/demo", "missing", is_default=True)
    check("/run/overlayd/mnt/demo", "other", is_default=True)


def test_default_mountpoint_still_checks_mounts_and_overlays() -> None:
    path = "/run/overlayd/mnt/demo"
    refused(path, "missing", is_default=True, mounts=[mount(path, "tmpfs", "tmpfs")])
    refused(path, "missing", is_default=True, overlays=[record("demo2", path)])


def test_mountpoint_accepts_iterators() -> None:
    check("/srv/view", mounts=iter([mount("/")]), overlays=iter([]))  # type: ignore[arg-type]


# --- check_overlay_options ---------------------------------------------------------------------

TARGET = "/run/overlayd/mnt/demo"
SOURCE = mount_source("demo")
BASE_OPTS = ("rw", "lowerdir+=/run/overlayd/demo/lower", "upperdir=/run/overlayd/demo/rw/upper",
             "workdir=/run/overlayd/demo/rw/work")


def overlay_mount(*extra: str, target: str = TARGET, source: str = SOURCE,
                  fstype: str = "overlay") -> MountInfo:
    return mount(target, fstype, source, BASE_OPTS + extra)


@pytest.mark.parametrize("extra", [
    (),
    tuple(f"{k}={v}" for k, v in PINNED),
    ("index=off",),
    ("redirect_dir=off", "xino=off", "userxattr"),
])
def test_overlay_options_ok(extra: tuple[str, ...]) -> None:
    check_overlay_options([mount("/"), overlay_mount(*extra)], TARGET, SOURCE)


def test_pinned_options_are_the_design_ones() -> None:
    assert dict(PINNED) == {"redirect_dir": "off", "index": "off", "metacopy": "off",
                            "xino": "off"}


@pytest.mark.parametrize("opt", ["index=on", "redirect_dir=on", "redirect_dir=follow",
                                 "metacopy=on", "xino=on", "xino=auto", "index="])
def test_overlay_options_pinned_on(opt: str) -> None:
    with pytest.raises(MountFailed) as ei:
        check_overlay_options([overlay_mount(opt)], TARGET, SOURCE)
    key, _, value = opt.partition("=")
    assert f"{key}={value}" in str(ei.value)
    assert f"{key}=off" in str(ei.value)
    assert TARGET in str(ei.value)


@pytest.mark.parametrize("mounts", [
    [],
    [mount("/")],
    [overlay_mount(source="overlayd-other")],
    [overlay_mount(source="overlay")],
    [overlay_mount(fstype="tmpfs")],
    [overlay_mount(target=TARGET + "2")],
    [overlay_mount(), mount(TARGET, "tmpfs", "tmpfs")],  # something mounted over ours
])
def test_overlay_missing_or_not_ours(mounts: list[MountInfo]) -> None:
    with pytest.raises(MountFailed, match="did not appear"):
        check_overlay_options(mounts, TARGET, SOURCE)


def test_overlay_on_top_of_an_older_mount() -> None:
    check_overlay_options([mount(TARGET, "tmpfs", "tmpfs"), overlay_mount()], TARGET, SOURCE)


# --- layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "parent", "expected"), [
    ("/a/b", "/a", True),
    ("/a/b/c", "/a", True),
    ("/a", "/a", True),
    ("/a/", "/a", True),
    ("/a", "/a/", True),
    ("/a/b/", "/a/", True),
    ("/ab", "/a", False),
    ("/a-b", "/a", False),
    ("/a", "/a/b", False),
    ("/b", "/a", False),
    ("/", "/a", False),
    ("/a", "/", True),
    ("/", "/", True),
    ("/run/overlayd/mnt/x", "/run/overlayd", True),
    ("/run/overlayd2", "/run/overlayd", False),
])
def test_is_within(path: str, parent: str, expected: bool) -> None:
    assert is_within(path, parent) is expected
    assert is_within(Path(path), Path(parent)) is expected


def test_layout_paths() -> None:
    lay = Layout.for_overlay(Path("/run/overlayd"), "demo")
    assert lay.base == Path("/run/overlayd/demo")
    assert lay.record == Path("/run/overlayd/demo/overlay.json")
    assert lay.lower == Path("/run/overlayd/demo/lower")
    assert lay.upper_mount == Path("/run/overlayd/demo/rw")
    assert lay.upper == Path("/run/overlayd/demo/rw/upper")
    assert lay.work == Path("/run/overlayd/demo/rw/work")
    assert is_within(lay.upper, lay.upper_mount) and is_within(lay.work, lay.upper_mount)


def test_mount_source() -> None:
    assert SOURCE_PREFIX == "overlayd-"
    assert mount_source("demo") == "overlayd-demo"
    assert mount_source("demo").startswith(SOURCE_PREFIX)
