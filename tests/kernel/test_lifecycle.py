"""Create, write, discard on the real kernel: the mounts, the loop device, the image."""

from __future__ import annotations

import os
from pathlib import Path

from overlayd.host.mounttable import read_mounts
from tests import helpers
from tests.kernel.conftest import Env
from tests.kernel.zram_ledger import carries

PER_UPPER = True
PER_ENGINE = True  # and with engine = "fuse" (fuse-overlayfs over the same layers)


def _mount_at(target: str):  # type: ignore[no-untyped-def]
    found = [m for m in read_mounts() if m.target == target]
    assert found, f"nothing mounted at {target}"
    return found[-1]


def test_create_builds_three_layers_read_only_lower(env: Env, image: Path) -> None:
    rec = env.create("demo", image, size="16M")
    ov = _mount_at(rec.mountpoint)
    if env.engine == "fuse":  # libfuse names the mount after the server's argv[0]
        assert (ov.fstype, ov.source) == ("fuse.overlayd-demo", "overlayd-demo")
        assert rec.merged.engine == "fuse"
    else:
        assert (ov.fstype, ov.source) == ("overlay", "overlayd-demo")
        for key in ("redirect_dir", "index", "metacopy", "xino"):
            assert ov.super_option(key) in (None, "off")
    upper = _mount_at(env.paths(rec).tmpfs_dir)
    if env.upper == "zram":
        assert (upper.fstype, upper.source) == ("ext4", rec.upper.device)
        zram = os.path.basename(rec.upper.device)
        assert Path(f"/sys/block/{zram}/disksize").read_text().strip() == str(16 << 20)
        assert "discard" in upper.super_options or upper.super_option("discard") is not None
        assert not helpers.ext4_has_journal(rec.upper.device)
    else:
        assert (upper.fstype, upper.source) == ("tmpfs", "overlayd-demo")
        assert upper.super_option("size") == "16384k"
    lower = _mount_at(env.paths(rec).lower_dir)
    assert lower.source == rec.loop_device and "ro" in lower.options
    loop = os.path.basename(rec.loop_device)
    assert Path(f"/sys/block/{loop}/ro").read_text().strip() == "1"
    assert Path(f"/sys/block/{loop}/loop/autoclear").read_text().strip() == "1"
    assert rec.mountpoint == str(env.config.runtime_dir / "mnt" / "demo")
    assert (Path(rec.mountpoint) / "hello.txt").read_text() == "hello from the image\n"
    assert rec.state.value == "active" and rec.fstype == "ext4" and rec.owner_uid == 0


def test_writes_never_reach_the_image_and_discard_leaves_nothing(env: Env, image: Path) -> None:
    before = helpers.sha256(image)
    rec = env.create("demo", image)
    mp = Path(rec.mountpoint)
    (mp / "new.txt").write_text("new")
    (mp / "hello.txt").write_text("changed")
    (mp / "sub" / "keep.txt").unlink()
    os.sync()
    assert helpers.sha256(image) == before
    usage = env.run(env.manager.usage("demo"))
    assert usage.used > 0 and 0 < usage.size <= 64 << 20
    if env.upper == "zram":
        assert usage.original > 0 and usage.compressed > 0
    env.run(env.manager.discard("demo"))
    assert helpers.sha256(image) == before
    assert helpers.mounts_under(str(env.root)) == []
    assert not Path(env.paths(rec).base_dir).exists() and not mp.exists()
    assert env.manager.list() == []
    if env.upper == "zram":
        assert not carries(rec.upper.device, rec.upper.fs_uuid)
        env.zram.assert_clean()


def test_loop_device_is_freed_after_discard(env: Env, image: Path) -> None:
    rec = env.create("demo", image)
    env.run(env.manager.discard("demo"))
    assert helpers.attached_loops().get(rec.loop_device) != str(image)


def test_diff_reports_each_kind(env: Env, image: Path) -> None:
    rec = env.create("demo", image)
    mp = Path(rec.mountpoint)
    (mp / "added.txt").write_text("a")
    (mp / "hello.txt").write_text("other content")
    (mp / "sub" / "keep.txt").chmod(0o600)
    os.unlink(mp / "sub" / "keep.txt") if False else None
    (mp / "gone").mkdir()
    diff = dict((d.path, d.kind) for d in env.run(env.manager.diff("demo")))
    assert diff == {"/added.txt": "added", "/hello.txt": "modified",
                    "/sub/keep.txt": "metadata", "/gone": "added"}
    os.rmdir(mp / "gone")
    os.unlink(mp / "hello.txt")
    diff = dict((d.path, d.kind) for d in env.run(env.manager.diff("demo")))
    assert diff["/hello.txt"] == "deleted" and "/gone" not in diff


def test_opaque_directory_in_diff(env: Env, image: Path) -> None:
    rec = env.create("demo", image)
    mp = Path(rec.mountpoint)
    import shutil

    shutil.rmtree(mp / "sub")
    (mp / "sub").mkdir()
    (mp / "sub" / "fresh.txt").write_text("f")
    diff = dict((d.path, d.kind) for d in env.run(env.manager.diff("demo")))
    assert diff == {"/sub": "opaque", "/sub/fresh.txt": "added"}


def test_directory_lower(env: Env, root: Path) -> None:
    lower = root / "srcdir"
    lower.mkdir()
    (lower / "f").write_text("one")
    rec = env.create("dir", lower)
    assert rec.image_kind.value == "directory" and rec.loop_device == ""
    (Path(rec.mountpoint) / "f").write_text("two")
    assert (lower / "f").read_text() == "one"
    env.run(env.manager.commit("dir"))
    assert (lower / "f").read_text() == "two"
    env.run(env.manager.discard("dir"))


def test_image_given_as_fd(env: Env, image: Path, run) -> None:  # type: ignore[no-untyped-def]
    from overlayd.model import parse_spec

    fd = os.open(image, os.O_RDWR)  # even a read-write fd gives a read-only loop
    try:
        rec = run(env.manager.create(parse_spec({"name": "byfd", "image_fd": fd})))
    finally:
        os.close(fd)
    assert rec.image == str(image)
    assert Path(f"/sys/block/{os.path.basename(rec.loop_device)}/ro").read_text().strip() == "1"
    env.run(env.manager.discard("byfd"))


def test_user_mountpoint_and_options(env: Env, image: Path, root: Path) -> None:
    mp = root / "here"
    mp.mkdir()
    rec = env.create("opt", image, mountpoint=str(mp), mount_options=["nosuid", "nodev", "ro"])
    m = _mount_at(str(mp))
    assert {"ro", "nosuid", "nodev"} <= set(m.options)
    env.run(env.manager.discard("opt"))
    assert mp.is_dir(), "a mount point the caller made is left in place"
    assert rec.merged.created is False


def test_two_overlays_of_one_image(env: Env, image: Path) -> None:
    a = env.create("a", image)
    b = env.create("b", image)
    (Path(a.mountpoint) / "only-a").write_text("a")
    assert not (Path(b.mountpoint) / "only-a").exists()
    assert [r.name for r in env.manager.list()] == ["a", "b"]
    env.run(env.manager.discard("a"))
    env.run(env.manager.discard("b"))
