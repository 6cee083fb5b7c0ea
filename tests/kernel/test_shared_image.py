"""One image, many users (issue 11): one shared read-only lower per image, QEMU-style image
locks, and Commit refused with ImageInUse while anyone else reads the image."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.errors import ImageInUse
from overlayd.host.imagelocks import F_OFD_GETLK, F_OFD_SETLK, F_RDLCK, F_UNLCK, F_WRLCK
from overlayd.host.mounttable import read_mounts
from tests import helpers
from tests.kernel.conftest import Env


def lower_mounts(loop: str) -> list[str]:
    return [m.target for m in read_mounts() if m.source == loop]


def loops_of(image: Path) -> list[str]:
    return sorted(d for d, f in helpers.attached_loops().items() if f == str(image))


def fsck_clean(image: Path) -> None:
    r = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def image_holds(image: Path, rel: str) -> str:
    """A file as the image holds it, read with debugfs (nothing mounted)."""
    return subprocess.run(["debugfs", "-R", f"cat /{rel}", str(image)], capture_output=True,
                          text=True).stdout


def test_three_overlays_one_lower_and_commit_waits_for_the_others(env: Env,
                                                                  image: Path) -> None:
    recs = [env.create(n, image) for n in ("a", "b", "c")]
    loops = {r.loop_device for r in recs}
    assert len(loops) == 1 and loops_of(image) == sorted(loops), "one loop device"
    (loop,) = loops
    assert lower_mounts(loop) == [env.paths(recs[0]).lower_dir], "one lower mount"
    assert all(r.lowers[0].shared for r in recs)
    assert env.manager.image_users() == {(recs[0].lowers[0].dev, recs[0].lowers[0].ino): 3}
    mp = Path(recs[0].mountpoint)
    (mp / "new.txt").write_text("from a\n")
    (mp / "hello.txt").write_text("changed by a\n")
    (mp / "sub" / "keep.txt").unlink()
    (Path(recs[1].mountpoint) / "b.txt").write_text("from b\n")
    before = helpers.sha256(image)
    with pytest.raises(ImageInUse) as ei:
        env.run(env.manager.commit("a"))
    assert "'b'" in str(ei.value) and "'c'" in str(ei.value), str(ei.value)
    assert helpers.sha256(image) == before, "nothing changed"
    assert env.manager.get("a").state.value == "active"
    assert (mp / "new.txt").read_text() == "from a\n", "the writes stay in RAM"
    view = helpers.snapshot(mp)
    env.run(env.manager.discard("b"))
    env.run(env.manager.discard("c"))
    assert lower_mounts(loop) == [env.paths(recs[0]).lower_dir], "a still has the lower"
    env.run(env.manager.commit("a"))
    assert helpers.diff_snapshots(view, helpers.snapshot(mp)) == []
    env.run(env.manager.discard("a"))
    assert loops_of(image) == [] and helpers.mounts_under(str(env.root)) == []
    fsck_clean(image)
    d = env.create("d", image)  # the image on its own holds exactly the merged view
    assert helpers.diff_snapshots(view, helpers.snapshot(d.mountpoint)) == []
    env.run(env.manager.discard("d"))


def test_concurrent_commits_never_claim_a_write_the_image_lacks(env: Env, image: Path) -> None:
    """50 rounds of two overlays of one image committed at the same time, and of a commit
    racing the other overlay's discard: every success reached the image."""
    async def both(*coros: object) -> list[object]:
        return await asyncio.gather(*coros, return_exceptions=True)  # type: ignore[arg-type]

    for i in range(50):
        a, b = env.create("a", image), env.create("b", image)
        (Path(a.mountpoint) / f"a{i}.txt").write_text(f"a {i}\n")
        (Path(b.mountpoint) / f"b{i}.txt").write_text(f"b {i}\n")
        results = env.run(both(env.manager.commit("a"), env.manager.commit("b")))
        assert all(isinstance(r, ImageInUse) for r in results), results
        # A commit racing the other's discard: serialized, so it either sees b (refused)
        # or commits alone.
        results = env.run(both(env.manager.commit("a"), env.manager.discard("b")))
        env.run(env.manager.discard("a"))
        if not isinstance(results[0], BaseException):
            assert image_holds(image, f"a{i}.txt") == f"a {i}\n", f"round {i}: lost"
        else:
            assert isinstance(results[0], ImageInUse), results
        assert image_holds(image, f"b{i}.txt") == "", "b was discarded"
    assert loops_of(image) == []
    fsck_clean(image)


@pytest.fixture
def outside(root: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is killed by its PID afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def refused(env: Env, *names: str) -> str:
    with pytest.raises(ImageInUse) as ei:
        env.run(env.manager.commit("demo"))
    text = str(ei.value)
    for n in names:
        assert n in text, text
    assert env.manager.get("demo").state.value == "active"
    return text


def test_an_outside_loop_mount_refuses_commit(env: Env, image: Path, root: Path) -> None:
    env.create("demo", image)
    where = root / "outside"
    where.mkdir()
    helpers.sh("mount", "-o", "loop,ro", image, where)
    try:
        dev = next(m.source for m in read_mounts() if m.target == str(where))
        refused(env, dev, str(where))
    finally:
        helpers.sh("umount", where)
    env.run(env.manager.commit("demo"))


def test_an_outside_loop_device_refuses_commit(env: Env, image: Path) -> None:
    env.create("demo", image)
    dev = helpers.sh("losetup", "--find", "--show", "--read-only", image).stdout.strip()
    try:
        refused(env, f"loop device {dev}")
    finally:
        helpers.sh("losetup", "-d", dev)
    env.run(env.manager.commit("demo"))


def test_a_writer_refuses_commit(env: Env, image: Path,
                                 outside: list[subprocess.Popen[bytes]]) -> None:
    env.create("demo", image)
    p = subprocess.Popen(["bash", "-c", f"exec 3<>'{image}'; exec sleep 600"])
    outside.append(p)
    helpers.wait_for(lambda: os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"))
    refused(env, f"sleep (pid {p.pid}) has it open for writing")


LOCKER = """
import fcntl, os, struct, sys, time

PER_ENGINE = True  # every test here runs with engine = "kernel" and engine = "fuse"
fd = os.open(sys.argv[1], os.O_RDONLY)
for byte in map(int, sys.argv[2:]):
    fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", 0, 0, byte, 1, 0))  # F_OFD_SETLK, F_RDLCK
print("locked", flush=True)
time.sleep(600)
"""


def qemu_lock(image: Path, outside: list[subprocess.Popen[bytes]], *bytes_: int) -> int:
    """Another process takes QEMU's lock bytes on IMAGE, as QEMU would; its PID."""
    p = subprocess.Popen([sys.executable, "-c", LOCKER, str(image), *map(str, bytes_)],
                         stdout=subprocess.PIPE)
    outside.append(p)
    assert p.stdout is not None and p.stdout.readline() == b"locked\n"
    return p.pid


def test_a_qemu_style_lock_refuses_commit(env: Env, image: Path,
                                          outside: list[subprocess.Popen[bytes]]) -> None:
    env.create("demo", image)
    pid = qemu_lock(image, outside, 100)  # QEMU reading it (read-only drive)
    refused(env, f"(pid {pid}) holds a lock on it")


def test_overlayd_holds_qemus_locks(env: Env, image: Path) -> None:
    """What QEMU tests before it opens the image for writing: byte 201 ("write" not shared)
    is locked by overlayd while an overlay lives, and free again after."""
    def someone_holds(byte: int) -> bool:
        fd = os.open(image, os.O_RDONLY)
        try:
            raw = fcntl.fcntl(fd, F_OFD_GETLK, struct.pack("hhqqi4x", F_WRLCK, 0, byte, 1, 0))
            return struct.unpack("hhqqi4x", raw)[0] != F_UNLCK
        finally:
            os.close(fd)

    env.create("demo", image)
    assert someone_holds(100) and someone_holds(201) and not someone_holds(101)
    env.run(env.manager.discard("demo"))
    assert not someone_holds(100) and not someone_holds(201)
    assert F_RDLCK == 0 and F_OFD_SETLK == 37


def test_create_over_a_qemu_writer_is_refused(env: Env, image: Path,
                                              outside: list[subprocess.Popen[bytes]]) -> None:
    qemu_lock(image, outside, 100, 101, 201)  # QEMU with the image open read-write
    with pytest.raises(ImageInUse, match="'write' lock"):
        env.create("demo", image)
    assert env.manager.list() == [] and loops_of(image) == []


def test_create_over_an_image_mounted_read_write_is_refused(env: Env, image: Path,
                                                           root: Path) -> None:
    where = root / "rw"
    where.mkdir()
    helpers.sh("mount", "-o", "loop", image, where)
    try:
        (where / "live.txt").write_text("written now\n")
        dev = next(m.source for m in read_mounts() if m.target == str(where))
        try:
            rec = env.create("demo", image)
        except ImageInUse as e:
            assert dev in str(e) and str(where) in str(e) and "read-write" in str(e), str(e)
        else:  # the kernel mounted it (a clean journal): commit must refuse, naming it
            refused(env, dev, str(where))
            env.run(env.manager.discard(rec.name))
    finally:
        helpers.sh("umount", where)
    assert loops_of(image) == []


def test_restart_with_shared_lowers_adopts_every_overlay(env: Env, image: Path,
                                                         root: Path) -> None:
    other = helpers.make_image(root / "other.img", size="16M")
    for n in ("a", "b", "c"):
        env.create(n, image)
    env.create("d", other)
    (Path(env.manager.get("b").mountpoint) / "x.txt").write_text("kept\n")
    env.run(env.manager.aclose())
    env.manager = env.fresh_manager()
    env.run(env.manager.start())
    assert [r.name for r in env.manager.list()] == ["a", "b", "c", "d"]
    assert all(r.state.value == "active" for r in env.manager.list())
    assert sorted(env.manager.image_users().values()) == [1, 3]
    assert (Path(env.manager.get("b").mountpoint) / "x.txt").read_text() == "kept\n"
    assert len(loops_of(image)) == 1 and len(loops_of(other)) == 1
    for r in env.manager.list():
        env.run(env.manager.discard(r.name))
    assert helpers.mounts_under(str(env.root)) == []
    assert loops_of(image) == [] and loops_of(other) == []
    assert os.listdir(env.config.runtime_dir / ".lowers") == []
    assert env.manager.image_users() == {}


def test_a_mount_of_the_block_device_refuses_commit(env: Env, image: Path, root: Path) -> None:
    """The image is a block device (a loop device the test attached): another mount of the
    device is named."""
    dev = helpers.sh("losetup", "--find", "--show", image).stdout.strip()
    where = root / "elsewhere"
    where.mkdir()
    try:
        rec = env.create("demo", dev)
        assert rec.image_kind.value == "block" and rec.lowers[0].shared
        helpers.sh("mount", "-o", "ro", dev, where)
        try:
            refused(env, f"a mount of {dev} at '{where}'")
        finally:
            helpers.sh("umount", where)
        env.run(env.manager.commit("demo"))
        env.run(env.manager.discard("demo"))
    finally:
        helpers.sh("losetup", "-d", dev)
