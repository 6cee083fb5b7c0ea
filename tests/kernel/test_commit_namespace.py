"""A mount namespace cloned while Commit writes the image cannot pin it: the image is
written through a mount attached nowhere (issue: Commit failed with EROFS and left the
overlay unmounted and 'failed' when anyone ran unshare -m, nspawn or PrivateMounts=)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.kernel.conftest import Env


def test_commit_succeeds_while_a_namespace_is_cloned(env: Env, image: Path) -> None:
    rec = env.create("ns", image)
    for i in range(50):
        (Path(rec.mountpoint) / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    clones: list[subprocess.Popen[bytes]] = []

    def clone_once(_done: int, _total: int) -> None:
        if clones:
            return
        # A copy of our mount namespace, made while the image is open read-write.
        p = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                              "sleep", "60"])
        clones.append(p)
        deadline = time.monotonic() + 10
        ours = os.readlink("/proc/self/ns/mnt")
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{p.pid}/ns/mnt") != ours:
                    return
            except OSError:
                pass
            time.sleep(0.01)

    try:
        env.run(env.manager.commit("ns", progress=clone_once))
        assert clones, "the clone was made during the commit"
        assert env.manager.get("ns").state.value == "active"
        assert (Path(rec.mountpoint) / "f7.txt").read_text() == "file 7\n" * 100
        assert os.listdir(env.paths(rec).upper_dir) == []
    finally:
        for p in clones:  # ours, by PID
            p.send_signal(signal.SIGKILL)
            p.wait()
    env.run(env.manager.discard("ns"))
