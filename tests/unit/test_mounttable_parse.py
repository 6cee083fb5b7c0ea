"""mounttable's decoding of statmount(2) replies, and its mountinfo fallback (no kernel)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.host import mounttable
from overlayd.host import syscalls as sc
from overlayd.host.mounttable import from_statmount, mount_options, super_options
from overlayd.mountinfo import MountInfo, parse, parse_line


@pytest.mark.parametrize(("attr", "want"), [
    (0, ("rw", "relatime")),
    (sc.MOUNT_ATTR_RDONLY, ("ro", "relatime")),
    (sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC,
     ("ro", "nosuid", "nodev", "noexec", "relatime")),
    (sc.MOUNT_ATTR_NOATIME | sc.MOUNT_ATTR_NODIRATIME, ("rw", "noatime", "nodiratime")),
    (sc.MOUNT_ATTR_STRICTATIME, ("rw",)),
    (sc.MOUNT_ATTR_NODIRATIME, ("rw", "nodiratime", "relatime")),
    (sc.MOUNT_ATTR_NOSYMFOLLOW | sc.MOUNT_ATTR_IDMAP | sc.MOUNT_ATTR_NOEXEC,
     ("rw", "noexec", "relatime", "nosymfollow", "idmapped")),
])
def test_mount_options_in_mountinfo_order(attr: int, want: tuple[str, ...]) -> None:
    assert mount_options(attr) == want


@pytest.mark.parametrize(("flags", "opts", "want"), [
    (0, "", ("rw",)),
    (sc.SB_RDONLY, "", ("ro",)),
    (sc.SB_RDONLY | sc.SB_LAZYTIME | sc.SB_SYNCHRONOUS | sc.SB_DIRSYNC, "errors=remount-ro",
     ("ro", "sync", "dirsync", "lazytime", "errors=remount-ro")),
    (0, "size=4096k,mode=750", ("rw", "size=4096k", "mode=750")),
    # ',' ' ' and '\' inside a value come octal-escaped; decoded after the split.
    (0, r"lowerdir+=/a\054b\040c\134d,upperdir=/u,redirect_dir=off,userxattr",
     ("rw", "lowerdir+=/a,b c\\d", "upperdir=/u", "redirect_dir=off", "userxattr")),
])
def test_super_options(flags: int, opts: str, want: tuple[str, ...]) -> None:
    assert super_options(flags, opts) == want


def test_super_options_match_the_mountinfo_parser() -> None:
    line = (r"120 25 0:60 / /mnt rw,nosuid - overlay src rw,lowerdir+=/x\054y,"
            r"upperdir=/u\040v,index=off")
    opts = line.rsplit(" ", 1)[1]
    assert super_options(0, opts.removeprefix("rw,")) == parse_line(line).super_options


def reply(strings: dict[str, str], mask: int, **fields: int) -> tuple[sc.StatmountHead, bytes]:
    """A statmount reply as the kernel lays it out: offsets into NUL-terminated strings."""
    head = sc.StatmountHead()
    buf = b""
    for name, value in strings.items():
        setattr(head, name, len(buf))
        buf += value.encode() + b"\0"
    head.mask = mask
    for name, value in fields.items():
        setattr(head, name, value)
    return head, buf


BASIC = sc.STATMOUNT_SB_BASIC | sc.STATMOUNT_MNT_BASIC


def test_from_statmount_equals_the_mountinfo_line() -> None:
    head, strs = reply(
        {"mnt_point": "/run/overlayd/mnt/a b", "mnt_root": "/", "fs_type": "overlay",
         "sb_source": "overlayd-a", "mnt_opts": r"lowerdir+=/l\054x,upperdir=/u,index=off"},
        BASIC | sc.STATMOUNT_MNT_POINT | sc.STATMOUNT_MNT_ROOT | sc.STATMOUNT_FS_TYPE
        | sc.STATMOUNT_SB_SOURCE | sc.STATMOUNT_MNT_OPTS,
        mnt_id=(1 << 31) + 99, mnt_parent_id=(1 << 31) + 3, mnt_id_old=120,
        mnt_parent_id_old=25, sb_dev_major=0, sb_dev_minor=60,
        mnt_attr=sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    line = (r"120 25 0:60 / /run/overlayd/mnt/a\040b rw,nosuid,nodev,relatime shared:7 - "
            r"overlay overlayd-a rw,lowerdir+=/l\054x,upperdir=/u,index=off")
    assert from_statmount(head, strs) == parse_line(line)


def test_from_statmount_optional_fields() -> None:
    """Empty strings are left out of the mask: no source reads as mountinfo's 'none'; a
    subtype joins the type with a dot, as mountinfo shows fuse mounts."""
    head, strs = reply(
        {"mnt_point": "/m", "mnt_root": "/sub", "fs_type": "fuse", "fs_subtype": "sshfs"},
        BASIC | sc.STATMOUNT_MNT_POINT | sc.STATMOUNT_MNT_ROOT | sc.STATMOUNT_FS_TYPE
        | sc.STATMOUNT_FS_SUBTYPE,
        mnt_id_old=7, mnt_parent_id_old=1, sb_dev_major=8, sb_dev_minor=1,
        sb_flags=sc.SB_RDONLY, mnt_attr=sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_STRICTATIME)
    assert from_statmount(head, strs) == MountInfo(
        mount_id=7, parent_id=1, device="8:1", root="/sub", target="/m", options=("ro",),
        fstype="fuse.sshfs", source="none", super_options=("ro",))


def test_statmount_layout() -> None:
    """The fixed part is 512 bytes and struct statx 256, as in the uapi headers."""
    import ctypes
    assert ctypes.sizeof(sc.StatmountHead) == 512
    assert sc.StatmountHead.supported_mask.offset == 144
    assert sc.StatmountHead.mnt_point.offset == 108
    assert ctypes.sizeof(sc.Statx) == 256
    assert sc.Statx.stx_mnt_id.offset == 144
    assert ctypes.sizeof(sc.MntIdReq) == sc.MNT_ID_REQ_SIZE_VER0


# -- the fallback, on a mount table of our own ---------------------------------------------

@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A made-up mount table of directories under TMP_PATH, mountinfo forced."""
    for d in ("a", "a/b", "a/b/c", "ab", "s"):
        (tmp_path / d).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    t = str(tmp_path).replace(" ", "\\040")
    text = "\n".join([
        "1 0 0:1 / / rw - ext4 /dev/root rw",
        f"10 1 0:10 / {t}/a rw - tmpfs a rw",
        f"11 10 0:11 / {t}/a/b rw - tmpfs b rw",
        f"12 11 0:12 / {t}/a/b/c rw - tmpfs c rw",
        f"13 1 0:13 / {t}/ab rw - tmpfs ab rw",
        f"14 1 0:14 / {t}/s rw - tmpfs s-bottom rw",
        f"15 14 0:15 / {t}/s rw - tmpfs s-top rw",
    ]) + "\n"
    monkeypatch.setattr(mounttable, "read_mounts", lambda: parse(text))
    mounttable._force_backend("mountinfo")
    yield tmp_path
    mounttable._force_backend(None)


def sources(mounts: list[MountInfo]) -> list[str]:
    return [m.source for m in mounts]


def test_fallback_mount_at(table: Path) -> None:
    assert mounttable.backend() == "mountinfo"
    at = mounttable.mount_at
    assert at(str(table / "a")).source == "a"  # type: ignore[union-attr]
    assert at(str(table / "s")).source == "s-top"  # type: ignore[union-attr]
    assert at(str(table / "a" / "b") + "/").source == "b"  # type: ignore[union-attr]
    assert at(str(table / "link" / "b")).source == "b"  # type: ignore[union-attr]
    assert at(str(table / "link")) is None  # the symlink itself is no mount point
    assert at(str(table)) is None
    assert at(str(table / "missing")) is None


def test_fallback_mounts_below(table: Path) -> None:
    below = mounttable.mounts_below
    assert sources(below(str(table / "a"))) == ["a", "b", "c"]  # not 'ab'
    assert sources(below(str(table / "a" / "b"))) == ["b", "c"]
    assert sources(below(str(table / "s"))) == ["s-bottom", "s-top"]
    assert sources(below(str(table))) == ["a", "b", "c", "ab", "s-bottom", "s-top"]
    assert below(str(table / "missing")) == []


def test_fallback_mounts_containing(table: Path) -> None:
    chain = mounttable.mounts_containing(str(table / "a" / "b" / "c"))
    assert sources(chain) == ["c", "b", "a", "/dev/root"]
    assert sources(mounttable.mounts_containing(str(table / "s"))) == \
        ["s-top", "s-bottom", "/dev/root"]
    assert sources(mounttable.mounts_containing(str(table))) == ["/dev/root"]
    assert mounttable.mounts_containing(str(table / "missing")) == []


def test_fallback_walks_mounts_as_path_resolution_does(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """h/x (10) is hidden by h (11), mounted later on the same parent; h/x again (12) sits
    on h. Resolution crosses into h first, so 10 is neither at nor below h."""
    (tmp_path / "h" / "x").mkdir(parents=True)
    t = str(tmp_path)
    text = "\n".join([
        "1 0 0:1 / / rw - ext4 /dev/root rw",
        f"10 1 0:10 / {t}/h/x rw - tmpfs hidden rw",
        f"11 1 0:11 / {t}/h rw - tmpfs cover rw",
        f"12 11 0:12 / {t}/h/x rw - tmpfs seen rw",
    ]) + "\n"
    monkeypatch.setattr(mounttable, "read_mounts", lambda: parse(text))
    mounttable._force_backend("mountinfo")
    try:
        assert mounttable.mount_at(f"{t}/h/x").source == "seen"  # type: ignore[union-attr]
        assert sources(mounttable.mounts_below(f"{t}/h")) == ["cover", "seen"]
        assert sources(mounttable.mounts_below(t)) == ["hidden", "cover", "seen"]
        assert sources(mounttable.mounts_containing(f"{t}/h/x")) == ["seen", "cover",
                                                                    "/dev/root"]
    finally:
        mounttable._force_backend(None)


def test_fallback_without_a_root_in_the_table(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """In a chroot that is no mount point nothing is listed at '/': plain filtering."""
    (tmp_path / "m" / "n").mkdir(parents=True)
    t = str(tmp_path)
    text = (f"10 1 0:10 / {t}/m rw - tmpfs m rw\n"
            f"11 10 0:11 / {t}/m/n rw - tmpfs n rw\n")
    monkeypatch.setattr(mounttable, "read_mounts", lambda: parse(text))
    mounttable._force_backend("mountinfo")
    try:
        assert mounttable.mount_at(f"{t}/m").source == "m"  # type: ignore[union-attr]
        assert sources(mounttable.mounts_below(t)) == ["m", "n"]
    finally:
        mounttable._force_backend(None)
