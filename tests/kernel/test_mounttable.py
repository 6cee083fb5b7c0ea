"""mounttable on the real kernel: statx/statmount/listmount answer as mountinfo does.

Every mount is the test's own, under its temporary root, and is unmounted in a finally
block, most recent first (loop devices: autoclear, detached with their mount).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.checks import PINNED
from overlayd.host import mounttable
from overlayd.host import syscalls as sc
from overlayd.host.mounttable import read_mounts
from overlayd.host.syscalls import FsContext, umount2
from overlayd.mountinfo import MountInfo
from tests import helpers

ODD_SOURCE = "my src, with\\back slash"  # space, comma and backslash: all escaped in mountinfo


class Mounts:
    """Mounts the test makes, unmounted in reverse order by ``close``."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def sh(self, *args: str | os.PathLike[str]) -> str:
        target = str(args[-1])
        helpers.sh("mount", *args)
        self.made.append(target)
        return target

    def fs(self, fstype: str, target: Path, source: str | None = None,
           strings: tuple[tuple[str, str], ...] = (), attrs: int = 0) -> str:
        with FsContext(fstype) as fc:
            if source is not None:
                fc.set_string("source", source)
            for key, value in strings:
                fc.set_string(key, value)
            fc.create()
            fc.mount_at(str(target), attrs)
        self.made.append(str(target))
        return str(target)

    def close(self) -> None:
        while self.made:
            umount2(self.made.pop())


@contextlib.contextmanager
def own_mounts() -> Iterator[Mounts]:
    m = Mounts()
    try:
        yield m
    finally:
        m.close()


def from_mountinfo_at(path: str) -> MountInfo | None:
    found = [m for m in read_mounts() if m.target == path]
    return found[-1] if found else None


def from_mountinfo_below(path: str) -> list[MountInfo]:
    prefix = path.rstrip("/") + "/"
    return [m for m in read_mounts() if m.target == path or m.target.startswith(prefix)]


@pytest.fixture(params=["statmount", "mountinfo"])
def way(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs with the syscalls and with the forced fallback."""
    native = request.param == "statmount"
    if native and mounttable.backend() != "statmount":
        pytest.skip("this kernel has no usable statmount(2)")
    mounttable._force_backend(request.param)
    yield request.param
    mounttable._force_backend(None)


@pytest.fixture
def zoo(root: Path) -> Iterator[dict[str, str]]:
    """The test's own assortment of mounts under ROOT/z; names -> mount points."""
    z = root / "z"
    for d in ("tmpfs", "ovl", "ext4", "bind", "stack", "flags",
              "low,er dir", "upper", "work"):
        (z / d).mkdir(parents=True)
    (z / "low,er dir" / "file").write_text("lower\n")
    (root / "tree" / "sub").mkdir(parents=True)
    (root / "tree" / "sub" / "hello").write_text("hi\n")
    image = helpers.make_image(root / "disk.img", root / "tree", size="16M")
    with own_mounts() as m:
        out = {"tmpfs": m.fs("tmpfs", z / "tmpfs", ODD_SOURCE,
                             (("size", "4m"), ("mode", "0750")))}
        (z / "tmpfs" / "inner").mkdir()
        out |= {
            "inner": m.sh("-t", "tmpfs", "-o", "size=1m,nr_inodes=100", "inner",
                          z / "tmpfs" / "inner"),
            "ovl": m.fs("overlay", z / "ovl", "test-overlay",
                        (("lowerdir+", str(z / "low,er dir")), ("upperdir", str(z / "upper")),
                         ("workdir", str(z / "work")), *PINNED),
                        attrs=sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV),
            "ext4": m.sh("-o", "ro,loop,noexec", image, z / "ext4"),
            "bind": m.sh("--bind", z / "ext4" / "sub", z / "bind"),
            "stack": m.sh("-t", "tmpfs", "-o", "size=1m", "stack-bottom", z / "stack"),
        }
        m.sh("-t", "tmpfs", "-o", "size=2m,noexec,nosuid", "stack-top", z / "stack")
        out["flags"] = m.sh("-t", "tmpfs", "-o", "noatime,nodiratime,nosymfollow,sync",
                            "flags", z / "flags")
        yield out


def test_mount_at_equals_mountinfo(zoo: dict[str, str], way: str) -> None:
    for name, path in zoo.items():
        got = mounttable.mount_at(path)
        assert got is not None, name
        assert got == from_mountinfo_at(path), name
    assert mounttable.mount_at(zoo["stack"]).source == "stack-top"  # type: ignore[union-attr]
    assert mounttable.mount_at(zoo["tmpfs"]).source == ODD_SOURCE  # type: ignore[union-attr]


def test_the_values_read_back(zoo: dict[str, str], way: str) -> None:
    t = mounttable.mount_at(zoo["tmpfs"])
    assert t is not None and t.fstype == "tmpfs" and t.root == "/"
    assert t.super_option("size") == "4096k" and t.super_option("mode") == "750"
    o = mounttable.mount_at(zoo["ovl"])
    assert o is not None and o.fstype == "overlay" and o.source == "test-overlay"
    assert o.options[:3] == ("rw", "nosuid", "nodev")
    assert o.super_option("lowerdir+") == str(Path(zoo["ovl"]).parent / "low,er dir")
    for key, value in PINNED:
        assert o.super_option(key) in (value, None)
    e = mounttable.mount_at(zoo["ext4"])
    assert e is not None and e.fstype == "ext4" and e.source.startswith("/dev/loop")
    assert e.options[0] == "ro" and "noexec" in e.options and e.super_options[0] == "ro"
    b = mounttable.mount_at(zoo["bind"])
    assert b is not None and b.root == "/sub" and b.device == e.device
    f = mounttable.mount_at(zoo["flags"])
    assert f is not None
    assert f.options == ("rw", "noatime", "nodiratime", "nosymfollow")
    assert f.super_options == ("rw", "sync")


def test_mounts_below_equals_mountinfo(root: Path, zoo: dict[str, str], way: str) -> None:
    z = str(root / "z")
    everything = mounttable.mounts_below(z)  # no mount point: the holder's mounts, filtered
    assert everything == from_mountinfo_below(z)
    assert len(everything) == 8
    for name, path in zoo.items():
        assert mounttable.mounts_below(path) == from_mountinfo_below(path), name
    stack = mounttable.mounts_below(zoo["stack"])
    assert [m.source for m in stack] == ["stack-bottom", "stack-top"]
    assert [m.source for m in mounttable.mounts_below(zoo["tmpfs"])] == [ODD_SOURCE, "inner"]
    assert mounttable.mounts_below(str(root / "z" / "upper")) == []


def test_not_a_mount_point(root: Path, zoo: dict[str, str], way: str) -> None:
    z = root / "z"
    (z / "link").symlink_to(zoo["tmpfs"])
    (z / "file").write_text("")
    for path in (z, z / "upper", z / "missing", z / "missing" / "deeper", z / "file",
                 z / "file" / "x", z / "link", Path(zoo["ext4"]) / "sub"):
        assert mounttable.mount_at(str(path)) is None, path
    assert mounttable.mounts_below(str(z / "missing")) == []


def test_paths_as_the_kernel_resolves_them(root: Path, zoo: dict[str, str], way: str) -> None:
    z = root / "z"
    (z / "via").symlink_to(z)
    want = from_mountinfo_at(zoo["stack"])
    assert mounttable.mount_at(str(z / "via" / "stack")) == want  # as umount2 would find it
    assert mounttable.mount_at(zoo["stack"] + "/") == want
    assert mounttable.mount_at(zoo["tmpfs"] + "/inner/..") == from_mountinfo_at(zoo["tmpfs"])
    cwd = os.getcwd()
    os.chdir(z)
    try:
        assert mounttable.mount_at("stack") == want
    finally:
        os.chdir(cwd)
    assert mounttable.mount_at("/") == from_mountinfo_at("/")


def test_mount_id_is_the_one_fdinfo_reports(zoo: dict[str, str], way: str) -> None:
    """holders.find_holders matches /proc/PID/fdinfo's mnt_id against these ids."""
    m = mounttable.mount_at(zoo["stack"])
    assert m is not None
    fd = os.open(os.path.join(zoo["stack"], "held"), os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            mnt_id = next(int(line.split()[1]) for line in f if line.startswith("mnt_id:"))
    finally:
        os.close(fd)
        os.unlink(os.path.join(zoo["stack"], "held"))
    assert mnt_id == m.mount_id
    assert {x.mount_id for x in mounttable.mounts_below(zoo["stack"])} >= {mnt_id}


def test_unmounted_meanwhile(root: Path, way: str) -> None:
    (root / "gone").mkdir()
    with own_mounts() as m:
        m.sh("-t", "tmpfs", "gone", root / "gone")
        assert mounttable.mount_at(str(root / "gone")) is not None
    assert mounttable.mount_at(str(root / "gone")) is None
    assert mounttable.mounts_below(str(root / "gone")) == []


def test_fallback_when_statmount_is_missing(monkeypatch: pytest.MonkeyPatch,
                                            zoo: dict[str, str]) -> None:
    """ENOSYS (an older kernel, or a seccomp filter): the probe picks mountinfo."""
    def enosys(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(mounttable, "statmount", enosys)
    monkeypatch.setattr(mounttable, "listmount", enosys)
    mounttable._force_backend(None)
    try:
        assert mounttable.backend() == "mountinfo"
        assert mounttable.mount_at(zoo["ovl"]) == from_mountinfo_at(zoo["ovl"])
        z = str(Path(zoo["ovl"]).parent)
        assert mounttable.mounts_below(z) == from_mountinfo_below(z)
    finally:
        mounttable._force_backend(None)


def test_fallback_without_unique_ids_or_supported_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    real_statx, real_statmount = mounttable.statx, mounttable.statmount

    def old_statx(path: str, flags: int, mask: int) -> sc.Statx:
        st = real_statx(path, flags, mask)
        st.stx_mask &= ~sc.STATX_MNT_ID_UNIQUE  # Linux before 6.8
        return st

    def old_statmount(mnt_id: int, mask: int) -> tuple[sc.StatmountHead, bytes]:
        head, strs = real_statmount(mnt_id, mask)
        head.mask &= ~sc.STATMOUNT_SUPPORTED_MASK  # Linux before 6.15
        return head, strs

    try:
        for name, fake in (("statx", old_statx), ("statmount", old_statmount)):
            with monkeypatch.context() as mp:
                mp.setattr(mounttable, name, fake)
                mounttable._force_backend(None)
                assert mounttable.backend() == "mountinfo", name
    finally:
        mounttable._force_backend(None)


def test_this_kernel_has_statmount() -> None:
    """The kernel the suite runs on (6.18) answers with syscalls, not mountinfo."""
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) < (6, 15):
        pytest.skip("statmount's supported mask came in Linux 6.15")
    mounttable._force_backend(None)
    assert mounttable.backend() == "statmount"


def test_mounts_containing(root: Path, zoo: dict[str, str], way: str) -> None:
    """From the mount a path is in up to our root: how a nesting check finds an overlay."""
    inner = Path(zoo["tmpfs"]) / "inner"
    (inner / "deep").mkdir()
    chain = mounttable.mounts_containing(str(inner / "deep"))
    assert [m.source for m in chain[:2]] == ["inner", ODD_SOURCE]
    assert chain[-1] == from_mountinfo_at("/")
    assert [m.parent_id for m in chain[:-1]] == [m.mount_id for m in chain[1:]]
    assert mounttable.mounts_containing(str(inner))[0].source == "inner"
    assert mounttable.mounts_containing(zoo["stack"])[0].source == "stack-top"
    assert [m.source for m in mounttable.mounts_containing(zoo["stack"])[:2]] == \
        ["stack-top", "stack-bottom"]
    assert mounttable.mounts_containing(str(root / "z" / "upper"))[0] == \
        mounttable.mounts_containing(str(root))[0]
    assert mounttable.mounts_containing(str(root / "z" / "missing")) == []


def test_a_mount_hidden_by_one_on_its_parent(root: Path, way: str) -> None:
    """h/x mounted, then h mounted over it, then h/x again: path resolution, and so both
    ways, see only the second h/x; mountinfo lists both."""
    h = root / "h"
    (h / "x").mkdir(parents=True)
    with own_mounts() as m:
        m.sh("-t", "tmpfs", "hidden", h / "x")
        m.sh("-t", "tmpfs", "cover", h)
        (h / "x").mkdir()
        m.sh("-t", "tmpfs", "seen", h / "x")
        assert [x.source for x in from_mountinfo_below(str(h))] == ["hidden", "cover", "seen"]
        assert mounttable.mount_at(str(h / "x")).source == "seen"  # type: ignore[union-attr]
        assert [x.source for x in mounttable.mounts_below(str(h))] == ["cover", "seen"]
        assert [x.source for x in mounttable.mounts_below(str(h / "x"))] == ["seen"]
        # From a directory that is no mount point, the holder's whole tree is searched.
        assert [x.source for x in mounttable.mounts_below(str(root))] == \
            ["hidden", "cover", "seen"]
        assert [x.source for x in mounttable.mounts_containing(str(h / "x"))[:2]] == \
            ["seen", "cover"]


def test_syscalls_never_read_mountinfo(monkeypatch: pytest.MonkeyPatch,
                                       zoo: dict[str, str]) -> None:
    """The point of it all: with statmount the cost does not grow with the mount table."""
    if mounttable.backend() != "statmount":
        pytest.skip("this kernel has no usable statmount(2)")

    def no(*args: object) -> None:
        raise AssertionError("read /proc/self/mountinfo")

    real_open = open

    def guarded_open(file: object, *args: object, **kw: object) -> object:
        assert "mountinfo" not in str(file), "opened mountinfo"
        return real_open(file, *args, **kw)  # type: ignore[call-overload]

    with monkeypatch.context() as mp:  # undone before the fixtures read mountinfo
        mp.setattr(mounttable, "read_mounts", no)
        mp.setattr("builtins.open", guarded_open)
        for path in zoo.values():
            assert mounttable.mount_at(path) is not None
            assert mounttable.mounts_below(path)
            assert mounttable.mounts_containing(path)
        assert mounttable.mount_at(str(Path(zoo["stack"]).parent)) is None
