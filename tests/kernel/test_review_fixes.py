"""Defects found in review, each pinned by a test on the real kernel."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from overlayd.errors import CommitFailed, InvalidSpec
from overlayd.host.linux import LinuxHost
from overlayd.host.mounttable import read_mounts
from overlayd.model import parse_spec
from tests import helpers
from tests.kernel.conftest import Env

NOBODY = 65534


def test_directory_lower_swapped_for_a_symlink_is_not_written(env: Env, root: Path) -> None:
    tree, elsewhere = root / "tree", root / "rootdir"
    tree.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("root's\n")
    rec = env.create("swap", tree)
    (Path(rec.mountpoint) / "evil").write_text("planted\n")
    os.rename(tree, root / "old")
    os.symlink(elsewhere, tree)  # the path now points elsewhere
    with pytest.raises(CommitFailed, match="was replaced"):
        env.run(env.manager.commit("swap"))
    assert sorted(os.listdir(elsewhere)) == ["precious"]
    assert (Path(rec.mountpoint) / "evil").exists(), "the writes are still there"
    with pytest.raises(Exception, match="was replaced"):
        env.run(env.manager.diff("swap"))
    env.run(env.manager.discard("swap"))


def test_recovery_adopts_a_live_overlay_left_in_committing(env: Env, image: Path) -> None:
    import json

    rec = env.create("late", image)
    before = [m.mount_id for m in read_mounts() if m.target == rec.mountpoint]
    record = Path(env.paths(rec).base_dir) / "overlay.json"
    data = json.loads(record.read_text())
    data["state"] = "committing"  # stopped after the commit remounted, before saving
    record.write_text(json.dumps(data))
    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert [r.name for r in result.adopted] == ["late"]
    after = [m.mount_id for m in read_mounts() if m.target == rec.mountpoint]
    assert after == before, "the live overlay was kept, not detached and remounted"
    assert json.loads(record.read_text())["state"] == "active"


def test_a_deep_tree_fails_cleanly_and_keeps_the_writes(env: Env, image: Path) -> None:
    rec = env.create("deep", image, size="64M")
    d = Path(rec.mountpoint)
    for _ in range(400):
        d = d / "d"
    d.mkdir(parents=True)
    (d / "leaf").write_text("deep\n")
    with pytest.raises(CommitFailed, match="nested too deeply"):
        env.run(env.manager.commit("deep"))
    assert (d / "leaf").read_text() == "deep\n"
    assert env.manager.get("deep").state.value == "active"
    lower = [m for m in read_mounts() if m.target == env.paths(rec).lower_dir][-1]
    assert "ro" in lower.options, "the image is back to read-only"
    assert env.manager.get("deep").half_committed, "the image holds part of the writes"
    env.run(env.manager.discard("deep", force=True))


def test_image_fd_opened_with_o_path_or_write_only(env: Env, image: Path) -> None:
    for flags, words in ((os.O_PATH, "O_PATH"), (os.O_WRONLY, "write-only")):
        fd = os.open(image, flags)
        try:
            with pytest.raises(InvalidSpec, match=words):
                env.run(env.manager.create(parse_spec({"name": "x", "image_fd": fd})))
        finally:
            os.close(fd)


def test_non_root_caller_cannot_probe_or_use_directories(env: Env, root: Path,
                                                         image: Path) -> None:
    hidden = root / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "there.img").write_bytes(image.read_bytes())
    helpers.traversable(root.parent)
    root.chmod(0o755)
    texts = []
    for name in ("there.img", "not-there.img"):
        with pytest.raises(InvalidSpec) as exc:
            env.run(env.manager.create(parse_spec({"name": "x", "image": str(hidden / name)}),
                                       owner_uid=NOBODY))
        texts.append(str(exc.value).replace(name, "N"))
    assert texts[0] == texts[1], "no difference between a hidden file and a missing one"
    public = root / "public"
    public.mkdir(mode=0o755)
    with pytest.raises(InvalidSpec, match="only root may use a directory"):
        env.run(env.manager.create(parse_spec({"name": "x", "image": str(public)}),
                                   owner_uid=NOBODY))


def test_a_fifo_cannot_hang_create(env: Env, root: Path) -> None:
    fifo = root / "pipe.img"
    os.mkfifo(fifo, 0o666)
    root.chmod(0o755)
    helpers.traversable(root)
    for uid in (0, NOBODY):
        with pytest.raises(InvalidSpec, match="fifo"):
            env.run(env.manager.create(parse_spec({"name": "x", "image": str(fifo)}),
                                       owner_uid=uid))


def test_open_as_gives_the_callers_errno(root: Path) -> None:
    from overlayd.host.ascaller import open_as

    secret = root / "s"
    secret.write_text("s")
    secret.chmod(0o600)
    helpers.traversable(root)
    with pytest.raises(PermissionError):
        open_as(str(secret), NOBODY)
    fd = open_as(str(secret), 0)
    assert stat.S_ISREG(os.fstat(fd).st_mode)
    os.close(fd)
    assert LinuxHost().system.user_name(NOBODY) == "nobody"


def test_mount_point_through_a_symlink(env: Env, image: Path, root: Path, run) -> None:  # type: ignore[no-untyped-def]
    from overlayd.config import DaemonConfig
    from overlayd.manager import OverlayManager

    real = root / "mnt-real"
    real.mkdir()
    link = root / "mnt-link"
    os.symlink(real, link)
    rec = env.create("via", image, mountpoint=str(link))
    assert rec.mountpoint == str(real), "root's mount lands on the directory itself"
    env.run(env.manager.discard("via"))

    helpers.traversable(root)
    image.chmod(0o644)
    users = OverlayManager(DaemonConfig(runtime_dir=root / "run-users",
                                        user_mount_roots=(str(root),)), LinuxHost())
    run(users.start())
    with pytest.raises(InvalidSpec, match="goes through a symbolic link"):
        run(users.create(parse_spec({"name": "u", "image": str(image), "mountpoint": str(link)}),
                         owner_uid=NOBODY))
    rec = run(users.create(parse_spec({"name": "u", "image": str(image),
                                       "mountpoint": str(real)}), owner_uid=NOBODY))
    assert {"nosuid", "nodev"} <= set(rec.mount_options)
    run(users.discard("u"))
