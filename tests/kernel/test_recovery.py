"""A restarted daemon adopts live overlays, repairs interrupted commits and cleans
half-made ones, touching nothing that is not its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from overlayd.host.linux import LinuxHost
from overlayd.host.syscalls import umount2
from tests import helpers
from tests.kernel.conftest import Env

PER_ENGINE = True  # every test here runs with engine = "kernel" and engine = "fuse"


def _set_state(rec_dir: str, state: str) -> None:
    path = Path(rec_dir) / "overlay.json"
    data = json.loads(path.read_text())
    data["state"] = state
    path.write_text(json.dumps(data))


def test_restart_adopts_live_overlays(env: Env, image: Path) -> None:
    rec = env.create("live", image)
    (Path(rec.mountpoint) / "w.txt").write_text("written before the restart\n")
    second = env.fresh_manager()
    result = env.run(second.start())
    assert [r.name for r in result.adopted] == ["live"] and result.cleaned == []
    env.manager = second  # the first daemon is gone
    assert second.get("live").mountpoint == rec.mountpoint
    env.run(second.commit("live"))
    env.run(second.discard("live"))
    rec2 = env.create("again", image)
    assert (Path(rec2.mountpoint) / "w.txt").exists()
    env.run(second.discard("again"))


def test_half_made_overlay_is_cleaned(env: Env, image: Path) -> None:
    rec = env.create("half", image)
    _set_state(env.paths(rec).base_dir, "creating")  # as if the daemon died inside Create
    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert result.cleaned == ["half"] and result.adopted == []
    assert helpers.mounts_under(str(env.root)) == []
    assert not Path(env.paths(rec).base_dir).exists() and not Path(rec.mountpoint).exists()


def test_interrupted_commit_is_repaired_and_keeps_the_writes(env: Env, image: Path) -> None:
    rec = env.create("mid", image)
    (Path(rec.mountpoint) / "pending.txt").write_text("pending\n")
    # The daemon died in the middle of Commit: overlay unmounted, image mounted read-write.
    host = LinuxHost()
    umount2(rec.mountpoint)
    host.merge.settle(rec.name, env.paths(rec).upper_dir)  # FUSE: its server lets go
    umount2(env.paths(rec).lower_dir)
    info = host.images.reopen_image(rec.image, rec.lowers[0].dev, rec.lowers[0].ino, writable=True)
    loop = host.images.attach_loop(info, read_only=False, name=info.path)
    host.mounts.mount_fs(loop.path, env.paths(rec).lower_dir, "ext4", read_only=False)
    loop.release()
    host.images.close_image(info)
    _set_state(env.paths(rec).base_dir, "committing")

    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert result.repaired == ["mid"]
    assert second.get("mid").state.value == "active"
    assert (Path(rec.mountpoint) / "pending.txt").read_text() == "pending\n"
    lower = [m for m in host.mounts.table() if m.target == env.paths(rec).lower_dir][-1]
    assert "ro" in lower.options
    env.run(second.commit("mid"))
    assert os.listdir(env.paths(rec).upper_dir) == []
    env.run(second.discard("mid"))


def test_a_live_overlay_without_a_record_is_adopted_not_torn_down(env: Env,
                                                                  image: Path) -> None:
    """Live mounts without a record are never a dead daemon's half-made overlay (Create
    writes the record first): the writes in them are kept."""
    if env.engine == "fuse":
        pytest.skip("only kernel overlays are adopted without a record (boot overlays are "
                    "kernel mounts; a FUSE mount's server and layers need the record)")
    rec = env.create("orphan", image)
    (Path(rec.mountpoint) / "w.txt").write_text("keep\n")
    os.unlink(Path(env.paths(rec).base_dir) / "overlay.json")
    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert result.adopted and not result.cleaned
    assert (Path(rec.mountpoint) / "w.txt").read_text() == "keep\n"
    env.run(second.discard("orphan"))
    assert helpers.mounts_under(str(env.root)) == []


def test_a_directory_without_a_record_and_nothing_mounted_is_cleaned(env: Env,
                                                                    image: Path) -> None:
    rec = env.create("orphan", image)
    env.run(env.manager.discard("orphan"))
    for d in (env.paths(rec).base_dir, env.paths(rec).lower_dir, env.paths(rec).tmpfs_dir):
        Path(d).mkdir(exist_ok=True)
    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert result.cleaned == ["orphan"] and not Path(env.paths(rec).base_dir).exists()


def test_recovery_never_unmounts_what_is_not_ours(env: Env, image: Path) -> None:
    rec = env.create("mine", image)
    _set_state(env.paths(rec).base_dir, "creating")
    # Someone else mounted their own tmpfs over our mount point.
    helpers.sh("mount", "-t", "tmpfs", "someone-else", rec.mountpoint)
    try:
        second = env.fresh_manager()
        result = env.run(second.start())
        env.manager = second
        assert any("not mounted by overlayd" in p for p in result.problems)
        assert [m for m in helpers.mounts_under(str(env.root)) if "someone-else" in m]
    finally:
        helpers.sh("umount", rec.mountpoint)
    third = env.fresh_manager()
    env.run(third.start())
    env.manager = third
    assert helpers.mounts_under(str(env.root)) == []
