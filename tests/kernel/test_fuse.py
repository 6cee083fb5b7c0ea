"""engine = "fuse" on the real kernel: what only the FUSE engine has. Its server
(fuse-overlayfs, started as overlayd-NAME) lives on past the daemon, is adopted by the
next one, and when it dies the overlay is failed with its writes kept, and commits.
The lifecycle and commit tests run per engine too (PER_ENGINE in their modules)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from overlayd.errors import MountFailed
from overlayd.host import overlaymount
from overlayd.host.fusemount import SERVER_FILE, start_time
from overlayd.host.mounttable import mount_at
from tests import helpers
from tests.kernel.conftest import Env


@pytest.fixture
def merge_engine() -> str:
    return "fuse"


def server_of(env: Env, name: str) -> int:
    rec = env.manager.get(name)
    data = json.loads((Path(env.paths(rec).tmpfs_dir) / SERVER_FILE).read_text())
    assert start_time(data["pid"]) == data["start"]
    return int(data["pid"])


def kill_server(pid: int) -> None:
    """SIGKILL the server this test's overlay started (by its PID), and wait for its end."""
    fd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        helpers.wait_for(lambda: start_time(pid) is None or _zombie(pid), 10,
                         "the FUSE server to end")
    finally:
        os.close(fd)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_server_is_a_session_of_its_own_named_after_the_overlay(env: Env,
                                                                    image: Path) -> None:
    rec = env.create("srv", image)
    pid = server_of(env, "srv")
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"overlayd-srv"
    assert os.getsid(pid) == pid, "its own session: not stopped with the daemon's group"
    top = mount_at(rec.mountpoint)
    assert top is not None and (top.fstype, top.source) == ("fuse.overlayd-srv",
                                                            "overlayd-srv")
    assert rec.engine == "fuse" and json.loads(
        (Path(env.paths(rec).base_dir) / "overlay.json").read_text())["merged"]["engine"] == "fuse"
    env.run(env.manager.discard("srv"))
    helpers.wait_for(lambda: start_time(pid) is None or _zombie(pid), 10, "the server's end")


def test_upper_format_markers_stay_out_of_diff_and_image(env: Env, image: Path) -> None:
    """fuse-overlayfs marks an opaque directory three ways: trusted.overlay.opaque, a file
    .wh..wh..opq and a char 0/0 .wh..opq. Diff and Commit see one opaque directory."""
    rec = env.create("fmt", image)
    mp = Path(rec.mountpoint)
    for p in (mp / "sub").iterdir():
        p.unlink()
    (mp / "sub").rmdir()
    (mp / "sub").mkdir()
    (mp / "sub" / "fresh.txt").write_text("fresh\n")
    (mp / "hello.txt").unlink()
    upper = Path(env.paths(rec).upper_dir)
    assert os.getxattr(upper / "sub", "trusted.overlay.opaque") == b"y"
    assert (upper / "sub" / ".wh..wh..opq").is_file()
    wh = os.lstat(upper / "sub" / ".wh..opq")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert stat.S_ISCHR(os.lstat(upper / "hello.txt").st_mode), "a kernel-style whiteout"
    changes = env.run(env.manager.diff("fmt"))
    assert sorted((c.path, c.kind) for c in changes) == [
        ("/hello.txt", "deleted"), ("/sub", "opaque"), ("/sub/fresh.txt", "added")]
    env.run(env.manager.commit("fmt"))
    assert sorted(os.listdir(mp / "sub")) == ["fresh.txt"]
    env.run(env.manager.discard("fmt"))
    check = env.root / "check"
    check.mkdir()
    helpers.sh("mount", "-o", "ro,loop", image, check)
    try:
        assert sorted(os.listdir(check / "sub")) == ["fresh.txt"]
        assert not (check / "hello.txt").exists()
        assert os.listxattr(check / "sub") == []
    finally:
        helpers.sh("umount", check)


def test_overlay_survives_a_restart_and_the_server_is_adopted(env: Env, image: Path) -> None:
    rec = env.create("live", image)
    (Path(rec.mountpoint) / "w.txt").write_text("before the restart\n")
    pid = server_of(env, "live")
    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert [r.name for r in result.adopted] == ["live"] and result.repaired == []
    assert server_of(env, "live") == pid, "the same server, adopted"
    assert (Path(rec.mountpoint) / "w.txt").read_text() == "before the restart\n"
    env.run(second.discard("live"))


def test_a_killed_server_fails_the_overlay_and_commit_keeps_its_writes(env: Env,
                                                                        image: Path) -> None:
    rec = env.create("dies", image)
    mp = Path(rec.mountpoint)
    (mp / "kept.txt").write_text("written before the server died\n")

    async def watched() -> None:
        env.manager.watch_mounts(debounce=0.01, interval=0.01)  # the pidfd watch with it
        try:
            await env.manager.check_mounts()  # the server is watched from here
            kill_server(server_of(env, "dies"))
            while env.manager.get("dies").state.value != "failed":  # seen via the pidfd
                await asyncio.sleep(0.01)
        finally:
            env.manager.unwatch_mounts()

    env.run(asyncio.wait_for(watched(), 30))
    rec = env.manager.get("dies")
    assert "FUSE server" in rec.error and "still in RAM" in rec.error
    assert mount_at(str(mp)) is None, "the dead mount (ENOTCONN) is detached"
    assert (Path(env.paths(rec).upper_dir) / "kept.txt").exists(), "the writes stay"
    env.run(env.manager.commit("dies"))
    rec = env.manager.get("dies")
    assert rec.state.value == "active" and (mp / "kept.txt").read_text().startswith("written")
    assert os.listdir(env.paths(rec).upper_dir) == []
    env.run(env.manager.discard("dies"))
    again = env.create("again", image)
    assert (Path(again.mountpoint) / "kept.txt").exists(), "committed into the image"
    env.run(env.manager.discard("again"))


def test_a_server_first_checked_while_busy_is_still_watched(env: Env, image: Path) -> None:
    """Found by hand: a check that came while the overlay was busy (its create, a
    Reconfigure) skipped it, and its server, never watched, died unseen: no mount event
    follows a FUSE server's end, so the overlay stayed active over a dead mount (ENOTCONN)."""
    env.create("busy", image)

    async def watched() -> None:
        env.manager.watch_mounts(debounce=0.01, interval=0.01)
        watch = env.manager._watch
        assert watch is not None
        # A quiet mount table: other tests' mounts on this machine would start checks.
        asyncio.get_running_loop().remove_reader(watch.fileno())
        try:
            async with env.manager._lock("busy"):  # a call holds it while the check runs
                await env.manager.check_mounts()
            kill_server(server_of(env, "busy"))  # no mount event comes of it
            while env.manager.get("busy").state.value != "failed":
                await asyncio.sleep(0.01)
        finally:
            env.manager.unwatch_mounts()

    env.run(asyncio.wait_for(watched(), 30))
    assert "FUSE server" in env.manager.get("busy").error
    env.run(env.manager.discard("busy"))


def test_a_server_dead_at_start_is_mounted_again_over_the_same_writes(env: Env,
                                                                       image: Path) -> None:
    rec = env.create("restart", image)
    (Path(rec.mountpoint) / "kept.txt").write_text("kept\n")
    kill_server(server_of(env, "restart"))
    with pytest.raises(OSError) as ei:
        os.stat(rec.mountpoint)
    assert ei.value.errno == errno.ENOTCONN
    second = env.fresh_manager()
    result = env.run(second.start())
    env.manager = second
    assert result.repaired == ["restart"]
    assert (Path(rec.mountpoint) / "kept.txt").read_text() == "kept\n"
    assert second.get("restart").state.value == "active"
    env.run(second.discard("restart"))


def test_missing_fuse_overlayfs_is_a_clear_error(env: Env, image: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MountFailed, match=r"needs fuse-overlayfs.*Debian package"):
        env.create("nofuse", image)
    assert env.manager.list() == [] and helpers.mounts_under(str(env.root)) == []


def test_no_overlayfs_in_the_kernel_says_engine_fuse_would_work(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fault injection: fsopen("overlay") fails with ENODEV as on a kernel without it."""
    def no_overlay(fstype: str) -> None:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    monkeypatch.setattr(overlaymount, "FsContext", no_overlay)
    with pytest.raises(MountFailed) as ei:
        overlaymount.KernelOverlay().mount("x", str(tmp_path), lowers=[str(tmp_path)],
                                           upper=str(tmp_path), work=str(tmp_path), options=())
    assert 'engine = "fuse" would work' in str(ei.value)
    assert "no overlayfs" in str(ei.value)



def test_a_stopped_server_does_not_hold_up_the_checks(env: Env, image: Path) -> None:
    """The checks ask the server's process, never its mount: a server that hangs (here
    SIGSTOP) cannot wedge the daemon's mount following; it stays active."""
    env.create("slow", image)
    pid = server_of(env, "slow")
    os.kill(pid, signal.SIGSTOP)  # the server this test's overlay started
    try:
        assert env.run(asyncio.wait_for(env.manager.check_mounts(), 30)) == []
        assert env.manager.get("slow").state.value == "active"
    finally:
        os.kill(pid, signal.SIGCONT)
    env.run(env.manager.discard("slow"))


def test_another_uid_writes_as_itself_and_is_held_to_the_permissions(env: Env,
                                                                     root: Path) -> None:
    """The server runs as root: what uid 65534 makes through it is owned by 65534 in the
    upper (and so in the image), and the kernel checks permissions (default_permissions)."""
    tree = root / "tree"
    (tree / "pub").mkdir(parents=True)
    (tree / "pub").chmod(0o1777)
    img = helpers.make_image(root / "pub.img", tree)
    rec = env.create("uid", img)
    helpers.traversable(Path(rec.mountpoint))
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"]
    mine = subprocess.run([*as_nobody, f"echo x > {rec.mountpoint}/pub/mine"],
                          capture_output=True, text=True)
    assert mine.returncode == 0, mine.stderr
    refused = subprocess.run([*as_nobody, f"echo x > {rec.mountpoint}/not-mine"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    st = os.lstat(Path(env.paths(rec).upper_dir) / "pub" / "mine")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    env.run(env.manager.discard("uid"))
