"""A commit that cannot finish keeps the writes in RAM and the overlay mounted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from overlayd.errors import CommitFailed, NoSpace, OverlayBusy
from tests import helpers
from tests.kernel.conftest import Env


def test_image_full_keeps_the_writes_and_a_retry_finishes(env: Env, root: Path) -> None:
    tree = root / "tree"
    tree.mkdir()
    (tree / "old.txt").write_text("old\n")
    img = helpers.make_image(root / "small.img", tree, size="8M")
    rec = env.create("full", img, size="64M")
    mp = Path(rec.mountpoint)
    (mp / "a-small.txt").write_text("fits\n")
    big = os.urandom(16 << 20)
    (mp / "z-big.bin").write_bytes(big)
    (mp / "old.txt").unlink()

    with pytest.raises(NoSpace) as exc:
        env.run(env.manager.commit("full"))
    text = str(exc.value)
    assert "image is full" in text and "z-big.bin" in text and "still in RAM" in text

    assert env.manager.get("full").state.value == "active"
    assert (mp / "z-big.bin").read_bytes() == big, "the writes are still there"
    assert not (mp / "old.txt").exists() and (mp / "a-small.txt").exists()
    assert "z-big.bin" in os.listdir(env.paths(rec).upper_dir), "the upper was kept"
    assert env.manager.get("full").half_committed, "the image holds part of the writes"
    assert "image is full" in env.manager.get("full").error

    (mp / "z-big.bin").unlink()
    (mp / "z-small.bin").write_bytes(b"ok")
    env.run(env.manager.commit("full"))
    assert os.listdir(env.paths(rec).upper_dir) == []
    assert not env.manager.get("full").half_committed and not env.manager.get("full").error
    env.run(env.manager.discard("full"))
    assert subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0
    rec2 = env.create("check", img)
    assert sorted(os.listdir(rec2.mountpoint)) == ["a-small.txt", "lost+found", "z-small.bin"]
    env.run(env.manager.discard("check"))


def test_commit_while_busy_changes_nothing(env: Env, image: Path) -> None:
    before = helpers.sha256(image)
    rec = env.create("busy", image)
    mp = Path(rec.mountpoint)
    (mp / "pending.txt").write_text("pending\n")
    proc = subprocess.Popen(["sleep", "60"], cwd=mp)
    try:
        with pytest.raises(OverlayBusy) as exc:
            env.run(env.manager.commit("busy"))
        assert f"sleep (pid {proc.pid})" in str(exc.value)
    finally:
        proc.kill()
        proc.wait()
    assert (mp / "pending.txt").read_text() == "pending\n"
    assert env.manager.get("busy").state.value == "active"
    assert helpers.sha256(image) == before
    env.run(env.manager.commit("busy"))
    env.run(env.manager.discard("busy"))


def test_read_only_file_systems_refuse_commit_up_front(env: Env, root: Path) -> None:
    tree = root / "tree"
    tree.mkdir()
    (tree / "f").write_text("f")
    img = helpers.make_image(root / "ro.sqfs", tree, fstype="squashfs")
    rec = env.create("sq", img)
    (Path(rec.mountpoint) / "new").write_text("n")
    with pytest.raises(CommitFailed, match="squashfs, which is read-only by design"):
        env.run(env.manager.commit("sq"))
    assert (Path(rec.mountpoint) / "new").exists()
    env.run(env.manager.discard("sq"))


def test_image_replaced_since_create_is_not_written(env: Env, image: Path, root: Path) -> None:
    rec = env.create("swap", image)
    (Path(rec.mountpoint) / "x").write_text("x")
    other = helpers.make_image(root / "other.img")
    os.rename(other, image)  # a different inode at the recorded path
    with pytest.raises(CommitFailed, match="replaced by another file"):
        env.run(env.manager.commit("swap"))
    assert (Path(rec.mountpoint) / "x").read_text() == "x"
    env.run(env.manager.discard("swap"))
