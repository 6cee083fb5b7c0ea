"""engine = "fuse" through the real daemon process (--standalone) and overlayctl: the
FUSE server outlives a daemon that stops, the next daemon adopts it, and a server that
is killed is seen at once (its pidfd): the overlay is failed, its writes commit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from overlayd.host.fusemount import SERVER_FILE, start_time
from tests import helpers
from tests.bus.conftest import start_daemon, stop_daemon


def _server(runtime: Path, name: str) -> tuple[int, int]:
    data = json.loads((runtime / name / "rw" / SERVER_FILE).read_text())
    return int(data["pid"]), int(data["start"])


def _alive(pid: int, started: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z" and start_time(pid) == started


def test_fuse_server_outlives_the_daemon_is_adopted_and_its_death_is_seen(root: Path) -> None:
    tree = root / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello\n")
    img = helpers.make_image(root / "disk.img", tree)
    d = start_daemon(root)
    d2 = None
    try:
        r = d.ctl("create", "fz", str(img), "--engine", "fuse")
        assert r.returncode == 0, r.stderr
        status = json.loads(d.ctl("--json", "status", "fz").stdout)
        assert status["Engine"] == "fuse" and status["State"] == "active"
        assert "Engine: fuse (fuse-overlayfs)" in " ".join(d.ctl("status", "fz").stdout.split())
        mp = Path(status["MountPoint"])
        (mp / "kept.txt").write_text("written through FUSE\n")
        pid, started = _server(d.runtime, "fz")

        log = stop_daemon(d)  # SIGTERM: the daemon goes, the server stays
        assert "Traceback" not in log, log
        assert _alive(pid, started), "the FUSE server outlived the daemon"
        assert (mp / "kept.txt").read_text() == "written through FUSE\n"

        d2 = start_daemon(root)
        path = d2.call("GetOverlay", "s", "fz").stdout.split('"')[1]
        assert d2.prop(path, "State") == "active" and d2.prop(path, "Engine") == "fuse"
        assert _server(d2.runtime, "fz") == (pid, started), "the same server, adopted"

        os.kill(pid, signal.SIGKILL)  # the server this test's overlay started
        helpers.wait_for(lambda: d2.prop(path, "State") == "failed", 10,
                         "the overlay to be failed")
        assert "FUSE server" in d2.prop(path, "LastError")
        r = d2.ctl("commit", "fz")
        assert r.returncode == 0, r.stderr
        assert d2.prop(path, "State") == "active"
        assert (mp / "kept.txt").read_text() == "written through FUSE\n"
        pid2, started2 = _server(d2.runtime, "fz")
        assert pid2 != pid
        r = d2.ctl("discard", "fz")
        assert r.returncode == 0, r.stderr
        helpers.wait_for(lambda: not _alive(pid2, started2), 10, "the new server's end")
    finally:
        for daemon in (d, d2):
            if daemon is not None and daemon.proc.poll() is None:
                daemon.discard_all()
                stop_daemon(daemon)
    assert helpers.mounts_under(str(root)) == []
