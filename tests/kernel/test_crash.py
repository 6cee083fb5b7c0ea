"""kill -9 of the daemon right after every step of Create, Commit and Discard, on the real
kernel: a restarted daemon loses no write, leaks no mount or loop device, and every name
can be used again. The daemon is tests/kernel/crashing.py in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers
from tests.kernel.conftest import Env

PER_UPPER = True  # with a tmpfs upper and a zram upper

ROOT = Path(__file__).resolve().parents[2]
WRITES = {"a.txt": "first\n", "sub/b.txt": "second\n", "hello.txt": "changed\n"}
ACTIONS = ["create", "commit", "discard", "discard-force", "create-shared", "discard-shared"]


def child(env: Env, image: Path, action: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    env.drop_locks()  # the child is the daemon: the image is its to lock
    return subprocess.run([sys.executable, "-m", "tests.kernel.crashing",
                           str(env.config.runtime_dir), str(image), action, str(kill_at),
                           env.upper],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def prepare(env: Env, image: Path, action: str) -> None:
    """Before the action: an overlay with writes (but for create); for the -shared ones,
    another overlay of the image first, sharing its lower."""
    if action.endswith("-shared"):
        env.create("other", image)
    if action.startswith("create"):
        return
    rec = env.create("demo", image)
    for rel, text in WRITES.items():
        (Path(rec.mountpoint) / rel).parent.mkdir(exist_ok=True)
        (Path(rec.mountpoint) / rel).write_text(text)
    env.run(env.manager.aclose())


def restart(env: Env) -> None:
    env.manager = env.fresh_manager()
    env.run(env.manager.start())


def image_files(image: Path) -> dict[str, str]:
    """The writes as the image holds them (read with debugfs, nothing mounted)."""
    out = {}
    for rel in WRITES:
        r = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(image)], capture_output=True,
                           text=True)
        out[rel] = r.stdout
    return out


@pytest.mark.parametrize("action", ACTIONS)
def test_kill_after_every_step(env: Env, image: Path, action: str) -> None:
    prepare(env, image, action)
    restart(env)  # the child is the daemon now; ours must forget what it knew
    env.manager = env.fresh_manager()
    full = child(env, image, action, 0)
    assert full.returncode == 0, full.stderr
    steps = int(full.stdout.split()[-1])
    # Undo the full run so that each kill starts from the same place.
    restart(env)
    for rec in env.manager.list():
        env.run(env.manager.discard(rec.name, force=True))
    helpers.make_image(image, image.parent / "tree")
    for k in range(1, steps + 1):
        prepare(env, image, action)
        env.manager = env.fresh_manager()
        r = child(env, image, action, k)
        # The first run made the shared mount root: later ones may take a step less.
        assert r.returncode == -9 or (r.returncode == 0 and k >= steps - 1), \
            f"step {k}: {r.stderr[-2000:]}"
        restart(env)
        live = env.manager.list()
        if action == "commit":
            rec = env.manager.get("demo")
            assert rec.state.value == "active"
            seen = {rel: (Path(rec.mountpoint) / rel).read_text() for rel in WRITES}
            assert seen == WRITES, f"step {k}: a write was lost"
        if action.endswith("-shared"):  # the kill cost the sharer nothing
            other = env.manager.get("other")
            assert other.state.value == "active", f"step {k}"
            assert (Path(other.mountpoint) / "hello.txt").exists(), f"step {k}"
        for rec in live:
            env.run(env.manager.discard(rec.name, force=True))
        assert helpers.mounts_under(str(env.root)) == [], f"step {k}: mounts left"
        assert set(os.listdir(env.config.runtime_dir)) <= {"mnt", ".lowers"}, \
            f"step {k}: files left"
        lowers = env.config.runtime_dir / ".lowers"
        assert not lowers.exists() or not os.listdir(lowers), f"step {k}: a lower left"
        # The name is free again.
        env.create("demo", image)
        env.run(env.manager.discard("demo"))
        # Autoclear detaches the loop device once its last user is gone, which the kernel
        # may finish a moment after the unmount returned: wait (a bound that only catches
        # a device that stays).
        helpers.wait_for(lambda: not [d for d, f in helpers.attached_loops().items()
                                      if f == str(image)], what=f"step {k}: loop device left")
        helpers.make_image(image, image.parent / "tree")
